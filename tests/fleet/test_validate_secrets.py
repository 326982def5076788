"""A credential in a URL of a manifest would be in Git, in every device's logs and in its status: `validate` (and
so the agent, which runs the same checks on every commit) refuses userinfo in the Fleet's TUF URLs and in a
Deployment's capture destination, at file:line, and the message never quotes the secret."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._agent_fixtures import REPO_ROOT
from tests._cli import run_cli

TOKEN = "ghp_V4lidateT0ken1a2b3c4d5e6"
FORMS = [
    f"https://{TOKEN}@models.acme.example/tuf/metadata/",  # token@
    f"https://ops:{TOKEN}@models.acme.example/tuf/metadata/",  # user:pass@
    f"https://{TOKEN}:x-oauth-basic@models.acme.example/tuf/metadata/",
    f"https://x-access-token%3A{TOKEN}@models.acme.example/tuf/metadata/",  # percent-encoded
    f"https://{TOKEN}%40models.acme.example/tuf/metadata/",
    f"HTTPS://{TOKEN}@models.acme.example/tuf/metadata/",  # fails the schema's pattern, whose message quotes it
]


def _example(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    shutil.copytree(REPO_ROOT / "fleet-repo-example", repo)
    return repo


def _line(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


@pytest.mark.parametrize("url", FORMS)
@pytest.mark.parametrize("key", ["metadataUrl", "targetsUrl"])
def test_validate_refuses_userinfo_in_the_fleets_tuf_urls(tmp_path: Path, url: str, key: str) -> None:
    repo = _example(tmp_path)
    fleet = repo / "fleet.yaml"
    old = {"metadataUrl": "https://models.acme.example/tuf/metadata/",
           "targetsUrl": "https://models.acme.example/tuf/targets/"}[key]
    fleet.write_text(fleet.read_text().replace(f"{key}: {old}", f"{key}: {url}"))
    r = run_cli("validate", str(repo))
    assert r.code == 1, r.text
    assert f"fleet.yaml:{_line(fleet, key)}:" in r.text, r.text
    assert TOKEN not in r.text
    if url.startswith("HTTPS"):
        assert "'HTTPS://***@models.acme.example" in r.text  # the schema message, redacted
    else:
        assert f"tuf.{key} must not hold credentials" in r.text and "bearerTokenFile" in r.text


@pytest.mark.parametrize("url", [f"https://{TOKEN}@capture.example.com/vibration",
                                 f"https://{TOKEN}%40capture.example.com/vibration",
                                 f"HTTPS://{TOKEN}@capture.example.com/vibration"])
def test_validate_refuses_userinfo_in_a_capture_destination(tmp_path: Path, url: str) -> None:
    repo = _example(tmp_path)
    dep = repo / "deployments" / "vibration-anomaly.yaml"
    dep.write_text(dep.read_text().replace("url: https://capture.example.com/vibration", f"url: {url}"))
    r = run_cli("validate", str(repo))
    assert r.code == 1 and f"deployments/vibration-anomaly.yaml:{_line(dep, 'url: ')}:" in r.text, r.text
    assert TOKEN not in r.text


def test_plain_and_file_urls_stay_valid(tmp_path: Path) -> None:
    repo = _example(tmp_path)
    fleet = repo / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("https://models.acme.example/tuf/metadata/",
                                               "file:///srv/tuf/metadata/"))
    r = run_cli("validate", str(repo))
    assert r.code == 0, r.text
