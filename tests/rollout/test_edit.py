"""Deployment edits: the smallest diff, comments and formatting kept, the result checked."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from reconciler.rollout import edit
from reconciler.rollout.edit import EditError

EXAMPLE = (Path(__file__).resolve().parents[2] / "fleet-repo-example/deployments/image-classifier.yaml").read_text()


def changed(a: str, b: str) -> list[str]:
    return [line for line in difflib.unified_diff(a.splitlines(), b.splitlines(), n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_promote_is_a_one_line_diff() -> None:
    e = edit.promote(EXAMPLE, "image-classifier")
    assert changed(EXAMPLE, e.text) == ["-    step: 1", "+    step: 2"]
    assert e.summary == "rollout image-classifier: promote 1.3.0 to step 2 (50%)"
    assert "# yaml-language-server" in e.text and "change: CHG-2291" in e.text


def test_promote_inserts_a_missing_step_and_keeps_comments() -> None:
    text = EXAMPLE.replace("    step: 1\n", "").replace("  rollout:\n", "  rollout:  # staged\n")
    e = edit.promote(text, "image-classifier")
    assert changed(text, e.text) == ["+    step: 1"]
    assert "rollout:  # staged" in e.text


def test_promote_past_the_last_step_completes() -> None:
    text = EXAMPLE.replace("    step: 1\n", "    step: 3  # last\n")
    e = edit.promote(text, "image-classifier")
    assert "rollout:" not in e.text and "from:" not in e.text
    assert 'version: "1.3.0"' in e.text and "update:\n    strategy: availability" in e.text
    assert all(line.startswith("-") for line in changed(text, e.text))
    assert edit.deployment_data(e.text, "image-classifier")["spec"]["update"]["strategy"] == "availability"


def test_abort_goes_back_to_from_in_one_edit() -> None:
    e = edit.abort(EXAMPLE, "image-classifier")
    diff = changed(EXAMPLE, e.text)
    assert diff[:2] == ['-  version: "1.3.0"', '+  version: "1.2.0"']
    assert all(line.startswith("-") for line in diff[2:]) and "rollout:" not in e.text
    assert e.summary == "rollout image-classifier: abort 1.3.0, back to 1.2.0"


def test_abort_with_rollout_before_version() -> None:
    text = ("apiVersion: modelfleet/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  rollout:\n    from: '1'\n"
            "    steps: [{percent: 100}]\n  model: m\n  version: '2'  # new\n  serveAs: e\n")
    e = edit.abort(text, "d")
    assert e.text == "apiVersion: modelfleet/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  model: m\n" \
                     "  version: '1'  # new\n  serveAs: e\n"


def test_abort_of_a_first_rollout_removes_the_deployment() -> None:
    """No `from` (a first rollout: devices outside the steps run nothing of it): abort goes back to nothing. Alone
    in its file, the file goes; in a multi-document file, only its document, the others byte for byte."""
    first = EXAMPLE.replace('    from: "1.2.0"\n', "")
    e = edit.abort(first, "image-classifier")
    assert e.delete and e.text == ""
    assert e.summary == "rollout image-classifier: abort 1.3.0, a first rollout: remove the deployment"
    other = EXAMPLE.replace("name: image-classifier\n  annotations", "name: other\n  annotations")
    for text, kept in ((other + "---\n" + first, other), (first + "---\n" + other, "---\n" + other),
                       ("---\n" + other + "---\n" + first + "---\n" + other.replace("other", "third"),
                        "---\n" + other + "---\n" + other.replace("other", "third"))):
        e = edit.abort(text, "image-classifier")
        assert not e.delete and e.text == kept, e.text
    with pytest.raises(EditError, match="not in a rollout"):
        edit.abort(EXAMPLE[: EXAMPLE.index("  rollout:")] + EXAMPLE[EXAMPLE.index("  update:"):], "image-classifier")


def test_pause_and_resume_roundtrip() -> None:
    paused = edit.set_paused(EXAMPLE, "image-classifier", True)
    assert changed(EXAMPLE, paused.text) == ["+    paused: true"]
    resumed = edit.set_paused(paused.text, "image-classifier", False)
    assert resumed.text == EXAMPLE
    with pytest.raises(EditError, match="already paused"):
        edit.set_paused(paused.text, "image-classifier", True)


def test_multi_document_file_edits_the_right_document() -> None:
    other = EXAMPLE.replace("name: image-classifier\n  annotations", "name: other\n  annotations")
    text = other + "---\n" + EXAMPLE
    e = edit.promote(text, "image-classifier")
    assert changed(text, e.text) == ["-    step: 1", "+    step: 2"]
    assert e.text.index("step: 2") > e.text.index("---")


def test_refusals() -> None:
    plain = EXAMPLE[: EXAMPLE.index("  rollout:")] + EXAMPLE[EXAMPLE.index("  update:"):]
    with pytest.raises(EditError, match="not in a rollout"):
        edit.promote(plain, "image-classifier")
    with pytest.raises(EditError, match="no Deployment 'nope'"):
        edit.promote(EXAMPLE, "nope")
    with pytest.raises(EditError, match="cannot parse"):
        edit.promote("a: [\n", "x")
    flow = ("kind: Deployment\nmetadata: {name: d}\nspec:\n  version: '2'\n"
            "  rollout: {from: '1', steps: [{percent: 50}, {percent: 100}]}\n")
    with pytest.raises(EditError, match="flow style"):
        edit.promote(flow, "d")
