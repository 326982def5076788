"""The docs hold together: every relative link in README.md and docs/*.md points at a file (and heading) that
exists, and the README links every page in docs/, so no page is unreachable from the front page."""

from __future__ import annotations

import re
from pathlib import Path

from tests._docblocks import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return _LINK.findall(text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in _FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower())
            out.add(title.replace(" ", "-"))
    return out


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http(s):, mailto: — not this repository's
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO_ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no {dest.relative_to(REPO_ROOT) if dest.is_relative_to(REPO_ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO_ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page() -> None:
    linked = {(REPO_ROOT / t.partition("#")[0]).resolve() for t in _links(REPO_ROOT / "README.md")}
    missing = [p.relative_to(REPO_ROOT).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links none of: {missing}"


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# A title, with `code`\n\n[ok](p.md#a-title-with-code) [x](nope.md) ![img](i.png)\n"
                    "```\n[not](a-link.md)\n```\n")
    assert _links(page) == ["p.md#a-title-with-code", "nope.md"]
    assert "a-title-with-code" in _anchors(page)
