"""docs/cli.md is generated from the command tree; this fails when a command changes and the page was not
regenerated (`modelfleet docs cli --output docs/cli.md`)."""

from __future__ import annotations

from pathlib import Path

from reconciler.cli.clidoc import generate
from tests._cli import run_cli
from tests.cli._tree import commands

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_is_up_to_date() -> None:
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == generate(), \
        "docs/cli.md is stale: run `modelfleet docs cli --output docs/cli.md`"


def test_every_command_has_its_section() -> None:
    text = generate()
    for path, _, _ in commands():
        assert f"\n## modelfleet {path}".rstrip() + "\n" in text, f"no section for `modelfleet {path}`"


def test_check_fails_on_a_stale_page_and_write_fixes_it(tmp_path: Path) -> None:
    page = tmp_path / "cli.md"
    page.write_text("# stale\n")
    r = run_cli("docs", "cli", "--output", str(page), "--check")
    assert r.code == 1 and r.err.strip() == f"error: {page} is out of date; run `modelfleet docs cli --output {page}`"
    assert run_cli("docs", "cli", "--output", str(page)).code == 0
    r = run_cli("docs", "cli", "--output", str(page), "--check")
    assert r.code == 0 and r.out.strip() == f"{page} is up to date"
