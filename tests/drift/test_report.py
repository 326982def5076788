"""`modelfleet fleet drift`: a fleet whose devices pushed drift sections through the real status writer; the
report merges their window counts per site and fleet, and its HTML renders in a real headless chromium."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconciler.drift import stats
from reconciler.drift.baseline import Baseline, build_baseline
from reconciler.drift.features import TensorLayout
from reconciler.drift.report import aggregate, points_from_history
from reconciler.drift.settings import decode_counts, encode_counts
from reconciler.gitops.statuswriter import StatusWriter
from tests._cli import run_cli
from tests._git_fixtures import Upstream, make_status
from tests._identity import device_key, inventory_files

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SHIFTS = {"cam-1": 0.0, "cam-2": 0.0, "cam-3": 1.0}  # cam-3 (site south) drifts on feature x[2]
SITES = {"cam-1": "north", "cam-2": "north", "cam-3": "south"}


def _baseline() -> tuple[Baseline, bytes]:
    rng = np.random.default_rng(5)
    layout = TensorLayout("x", "input", "tabular", columns=4)
    doc = build_baseline([layout], {"x": rng.normal(size=(4000, 4))}, window=500)
    data = json.dumps(doc).encode()
    return Baseline.from_bytes(data), data


BASE, BASE_BYTES = _baseline()


def _window(shift: float, rng: np.random.Generator, n: int = 500) -> dict[str, Any]:
    x = rng.normal(size=(n, 4))
    x[:, 2] += shift
    counts = {f.name: stats.bin_counts(x[:, i], f.edges) for i, f in enumerate(BASE.features)}
    scores = {k: stats.score("psi", c, f.reference) for (k, c), f in zip(counts.items(), BASE.features, strict=True)}
    v = stats.verdict(scores, n, warn=0.1, alert=0.25, min_samples=200)
    return {"level": v.level, "score": v.score, "method": "psi", "warn": 0.1, "alert": 0.25, "samples": n,
            "minSamples": 200, "window": 500, "action": "alert", "baseline": BASE.digest,
            "worst": [{"feature": f, "score": s} for f, s in v.worst],
            "bins": {k: encode_counts(c) for k, c in counts.items()}}


def status_with_drift(device: str, hours_ago: int, shift: float, rng: np.random.Generator) -> dict[str, Any]:
    hb = (NOW - dt.timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z")
    doc = make_status(device, applied="a" * 40, heartbeat=hb, deployment="doors")
    doc["status"]["labels"] = {"site": SITES[device]}
    doc["status"]["endpoints"][0]["drift"] = _window(shift, rng)
    return doc


@pytest.fixture(scope="module")
def fleet_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("driftfleet")
    up = Upstream(root)
    ids = {dev: device_key(root / "keys", dev) for dev in SHIFTS}
    up.commit(inventory_files({dev: line for dev, (_, line) in ids.items()}))
    rng = np.random.default_rng(9)
    for dev, shift in SHIFTS.items():
        w = StatusWriter(up.file_url, dev, root / "devices" / dev, signing_key=ids[dev][0])
        for hours in (6, 4, 2, 0):  # the shift grows over time on the drifting device
            w.submit(status_with_drift(dev, hours, shift * (6 - hours) / 6, rng))
            assert w.flush(30)
        w.close()
    (root / "baselines").mkdir()
    (root / "baselines" / "doors-1.0.0-baseline.json").write_bytes(BASE_BYTES)
    return root


def test_merged_counts_score_like_one_window_over_all_devices() -> None:
    rng = np.random.default_rng(1)
    docs = {dev: status_with_drift(dev, 0, shift, rng) for dev, shift in SHIFTS.items()}
    points = [p for dev, d in docs.items() for p in points_from_history(dev, [d])]
    rows = {r.scope: r for r in aggregate(points, {BASE.digest: BASE})}
    assert set(rows) == {"fleet", "site=north", "site=south", "device=cam-1", "device=cam-2", "device=cam-3"}
    assert rows["fleet"].merged and rows["fleet"].devices == 3 and rows["fleet"].samples == 1500
    # the fleet score is the score of the summed counts, against the same reference
    total = sum(np.array(decode_counts(d["status"]["endpoints"][0]["drift"]["bins"]["x[2]"])) for d in docs.values())
    assert rows["fleet"].worst[0][0] == "x[2]"
    assert rows["fleet"].worst[0][1] == pytest.approx(stats.score("psi", total, BASE.features[2].reference), abs=1e-6)
    assert rows["site=south"].level == "Alert" and rows["site=north"].level == "OK"
    assert rows["fleet"].score < rows["site=south"].score  # one drifting device out of three: diluted
    # without the baseline the fleet row falls back to the worst device's own score
    assert not aggregate(points, {})[0].merged


def test_fleet_drift_cli_table_json_html_png(fleet_repo: Path, tmp_path: Path) -> None:
    repo = str(fleet_repo / "srv" / "fleet.git")
    common = ["--repo", repo, "--cache-dir", str(tmp_path / "cache"), "--baselines", str(fleet_repo / "baselines")]
    r = run_cli("fleet", "drift", *common)
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["DEPLOYMENT", "VERSION", "SCOPE"]
    assert any(line.split()[2:3] == ["site=south"] and "Alert" in line for line in lines), r.out
    r = run_cli("fleet", "drift", *common, "--format", "json", "--since", "3h")
    doc = json.loads(r.out)
    assert {p["time"] for p in doc["series"]} <= {(NOW - dt.timedelta(hours=h)).isoformat().replace("+00:00", "Z")
                                                  for h in (2, 0)}
    assert len(doc["series"]) == 6
    fleet = next(x for x in doc["rows"] if x["scope"] == "fleet")
    assert fleet["merged"] and fleet["devices"] == 3
    html, png = tmp_path / "drift.html", tmp_path / "drift.png"
    r = run_cli("fleet", "drift", *common, "--html", str(html), "--png", str(png))
    assert r.code == 0, r.text
    text = html.read_text()
    assert text.count('<img class="plot"') == 1 and "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("fleet", "drift", *common, "--deployment", "nope")
    assert r.code == 0 and "no drift reported" in r.out
    r = run_cli("fleet", "drift", *common, "--since", "soon")
    assert r.code == 1 and r.err.startswith("error: --since:")


def test_fleet_drift_with_a_clone_reads_its_origin(fleet_repo: Path, tmp_path: Path) -> None:
    """The one --repo rule (tests/cli/test_repo_rule.py): the operator's clone means its origin."""
    args = ["--cache-dir", str(tmp_path / "cache"), "--baselines", str(fleet_repo / "baselines"), "--format", "json"]
    want = run_cli("fleet", "drift", "--repo", str(fleet_repo / "srv" / "fleet.git"), *args)
    got = run_cli("fleet", "drift", "--repo", str(fleet_repo / "operator"), *args)
    assert got.code == 0, got.text
    assert json.loads(got.out) == json.loads(want.out) and json.loads(want.out)["rows"]


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed (scripts/install-deps.sh installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_headless_chromium(fleet_repo: Path, tmp_path: Path) -> None:
    html = tmp_path / "drift.html"
    r = run_cli("fleet", "drift", "--repo", str(fleet_repo / "srv" / "fleet.git"), "--cache-dir",
                str(tmp_path / "cache"), "--baselines", str(fleet_repo / "baselines"), "--html", str(html))
    assert r.code == 0, r.text
    dom = _chromium("--dump-dom", html.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "modelfleet drift report" in dom.stdout and dom.stdout.count('class="plot"') == 1
    shot = tmp_path / "shot.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,900", html.as_uri(), tmp=tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    problems = [line for line in res.stderr.splitlines() + dom.stderr.splitlines()
                if "Refused to" in line or "Failed to load" in line or "Uncaught" in line or "net::ERR" in line]
    assert not problems, problems
    # the plots are on screen: the device lines' colours fill real pixels, not a broken-image icon
    import matplotlib.image as mpimg

    img = (mpimg.imread(shot)[:, :, :3] * 255).round().astype(int)
    blue = np.all(np.abs(img - np.array([31, 119, 180])) <= 12, axis=2).sum()  # matplotlib C0 (cam-1)
    red = np.all(np.abs(img - np.array([198, 40, 40])) <= 12, axis=2).sum()  # alert line / bar
    assert blue > 200 and red > 200, (blue, red)
    keep = os.environ.get("MODELFLEET_SCREENSHOT_DIR")  # how docs/img/drift-report.png was made
    if keep:
        shutil.copyfile(shot, Path(keep) / "drift-report.png")
