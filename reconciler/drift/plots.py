"""Plots of the drift report (matplotlib, optional extra ``plots``) and the self-contained HTML page.

The HTML embeds every plot as a ``data:`` PNG and carries a Content-Security-Policy that forbids any fetch, so
the page shows the same thing offline, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

from reconciler.core.conditions import parse_time
from reconciler.core.errors import UserError
from reconciler.drift.report import Point, Row

_LEVEL_COLOURS = {"Alert": "#c62828", "Warning": "#ef6c00", "OK": "#2e7d32", "Insufficient": "#757575"}


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display; same output everywhere
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'modelfleet[plots]'") from None
    return plt


def figure_png(dep: str, version: str, points: Sequence[Point], rows: Sequence[Row], dpi: int = 100) -> bytes:
    """Score over time per device (with warn/alert lines) and the fleet's worst features, as one PNG."""
    plt = _pyplot()
    fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    by_dev: dict[str, list[Point]] = {}
    for p in points:
        if p.score is not None:
            by_dev.setdefault(p.device, []).append(p)
    for dev, pts in sorted(by_dev.items()):
        pts = sorted(pts, key=lambda p: parse_time(p.time))
        ax_t.plot([parse_time(p.time) for p in pts], [p.score for p in pts], marker="o", ms=3, label=dev)
    if points:
        ax_t.axhline(points[0].warn, color=_LEVEL_COLOURS["Warning"], ls="--", lw=1, label="warn")
        ax_t.axhline(points[0].alert, color=_LEVEL_COLOURS["Alert"], ls="--", lw=1, label="alert")
        ax_t.set_ylabel(f"{points[0].method} (worst feature)")
    ax_t.set_title(f"{dep} {version}: drift per device over time", fontsize=10)
    if by_dev:
        ax_t.legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    fleet = next((r for r in rows if r.scope == "fleet"), None)
    if fleet is not None and fleet.worst:
        names = [f for f, _ in fleet.worst][::-1]
        vals = [s for _, s in fleet.worst][::-1]
        colours = [_LEVEL_COLOURS["Alert"] if v >= points[0].alert else _LEVEL_COLOURS["Warning"]
                   if v >= points[0].warn else _LEVEL_COLOURS["OK"] for v in vals]
        ax_f.barh(names, vals, color=colours)
        what = "merged counts" if fleet.merged else "worst device"
        ax_f.set_title(f"fleet ({fleet.devices} devices, {what}): {fleet.level}", fontsize=10)
        ax_f.tick_params(labelsize=7)
    else:
        ax_f.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def combined_png(groups: Mapping[tuple[str, str], tuple[Sequence[Point], Sequence[Row]]]) -> bytes:
    """Every deployment/version figure stacked into one PNG (``--png``)."""
    plt = _pyplot()
    import matplotlib.image as mpimg

    images = [mpimg.imread(io.BytesIO(figure_png(d, v, pts, rows)), format="png")
              for (d, v), (pts, rows) in sorted(groups.items())]
    if not images:
        raise UserError("no drift data to plot (no endpoint with a drift section in the selected history)")
    fig = plt.figure(figsize=(11, 3.6 * len(images)))
    for i, img in enumerate(images):
        ax = fig.add_subplot(len(images), 1, i + 1)
        ax.imshow(img)
        ax.set_axis_off()
    fig.tight_layout(pad=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def html_report(title: str, generated: str, table: str,
                groups: Mapping[tuple[str, str], tuple[Sequence[Point], Sequence[Row]]]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}pre{background:#f5f5f5;padding:.8em;"
        "overflow-x:auto;font-size:12px}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        "h2{font-size:1.1em;margin-top:1.5em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f"<p>Generated {html.escape(generated)} from the devices' status "
        "history. Fleet and site rows score the merged bin counts of each device's newest window.</p>",
        f"<pre>{html.escape(table)}</pre>",
    ]
    if not groups:
        parts.append("<p>No endpoint reported drift in the selected history.</p>")
    for (dep, ver), (pts, rows) in sorted(groups.items()):
        png = base64.b64encode(figure_png(dep, ver, pts, rows)).decode("ascii")
        parts.append(f"<h2>{html.escape(dep)} {html.escape(ver)}</h2>")
        parts.append(f'<img class="plot" alt="drift of {html.escape(dep)} {html.escape(ver)}" '
                     f'src="data:image/png;base64,{png}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
