"""Capture uploads to a destination that requires a client certificate (mutual TLS), end to end: the policy from
the fleet repository, the agent config's ``capture`` block (``caFile``, ``clientCertFile``/``clientKeyFile``,
the upload token), a real agent serving and capturing, and nginx with WebDAV and ``ssl_verify_client on``.

Without a certificate, or with one a CA the server does not trust signed, nothing is stored and the device
names it — ``ClientCertificateRefused`` and the destination in ``status.capture.problems`` and in the audit
log — instead of a plain upload error; with a certificate the server's client CA signed, every batch lands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.config import load_agent_config
from reconciler.agent.loop import Agent
from tests._agent_fixtures import ENDPOINT, World, infer
from tests._servers import Pki, private_file
from tests.capture._capture import Campaign, WebDav, wait_until

TOKEN = "mtls-upload-t0ken-6d5e4f"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world").start()
    w.publish("1.0.0")
    yield w
    w.stop()


def _run_device(world: World, d: Path, capture: dict[str, Any]) -> tuple[Agent, dict[str, Any]]:
    """An agent with the ``capture`` block, converged and after 4 requests (2 batches); (agent, its status)."""
    token = private_file(d / "upload.token", TOKEN)
    cfg = world.agent_config(d, extra={"capture": {"uploadTokenFile": str(token), **capture}})
    agent = Agent(load_agent_config(cfg))
    agent.boot()
    assert agent.reconcile_once().converged
    for _ in range(4):
        infer(agent.c.url)
    return agent, agent.status_document()["status"]


def test_a_missing_or_untrusted_client_certificate_is_named_and_a_signed_one_uploads(
        world: World, tmp_path: Path, pki: Pki) -> None:
    campaign = Campaign()
    with WebDav(tmp_path / "dav", pki=pki, client_ca=pki.ca) as dav:
        origin = dav.url.rsplit("/", 1)[0]
        world.commit_fleet("1.0.0", deployment={"capture": campaign.section(batch={"records": 2},
                                                                            destination={"url": dav.url})})
        base = {"caFile": str(pki.ca), "allowedOrigins": [origin]}
        stranger_cert, stranger_key = pki.client_cert("stranger", ca="other-ca")
        cert, key = pki.client_cert("dev-1")
        cases = [("none", {}, "requires a client certificate and none is configured"),
                 ("untrusted", {"clientCertFile": str(stranger_cert), "clientKeyFile": str(stranger_key)},
                  "refused the client certificate")]
        for name, tls, words in cases:
            agent, _ = _run_device(world, tmp_path / name, {**base, **tls})
            try:
                svc = agent.c.capture
                wait_until(lambda svc=svc: svc.wake_sealer() or (svc.status().get("problems") or {}).get(ENDPOINT), 20,
                           f"the refusal named ({name})")
                problem = agent.status_document()["status"]["capture"]["problems"][ENDPOINT]
                assert problem.startswith(f"ClientCertificateRefused: {dav.url}/dev-1/ {words}"), problem
                failed = [e for e in svc.spool.audit.read() if e["event"] == "upload-failed"]
                assert failed and failed[0]["error"].startswith("ClientCertificateRefused: "), failed
                assert TOKEN not in problem and TOKEN not in str(failed)
            finally:
                agent.close()
            assert dav.stored("dev-1") == {}

        agent, _ = _run_device(world, tmp_path / "signed", {**base, "clientCertFile": str(cert),
                                                           "clientKeyFile": str(key)})
        try:
            svc = agent.c.capture
            wait_until(lambda: svc.wake_sealer() or svc.counts["uploaded"] == 2, 30, "both batches uploaded")
            status = agent.status_document()["status"]["capture"]
            assert "problems" not in status and "lastError" not in status, status
        finally:
            agent.close()
        assert len(dav.stored("dev-1")) == 2
