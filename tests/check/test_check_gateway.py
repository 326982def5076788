"""`modelfleet check --agent-config` with a site gateway in the config: the gateway's Git mirror and TUF cache
are probed as the agent asks them (a real `modelfleet gateway run` in front of a real central nginx); a gateway
that is down is a warning (the agent then goes to the servers themselves), a URL that is not a gateway's an
error."""

from __future__ import annotations

import json
from pathlib import Path

from tests._cli import run_cli
from tests._fleet_world import HttpWorld
from tests._gateway import GatewayProcess, central_tuf_url
from tests._servers import private_file


def _checks(config: Path, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    r = run_cli("check", "--agent-config", str(config), "--format", "json", *args)
    assert "Traceback" not in r.text, r.text
    return r.code, {c["name"]: c for c in json.loads(r.out)["checks"]}


def test_the_gateway_is_probed_as_the_agent_asks_it(tmp_path: Path) -> None:
    w = HttpWorld(tmp_path / "world").start()
    gw = None
    try:
        w.publish("1.0.0")
        w.upstream.commit(w.fleet_files("1.0.0"), "deploy 1.0.0")
        tuf = central_tuf_url(w)
        gw = GatewayProcess.for_world(w, tmp_path / "gateway").start()
        gw.round()  # its mirror and TUF cache are filled
        token = private_file(tmp_path / "secrets" / "tuf.token", "unused")
        extra = {"tuf": {"metadataUrl": f"{tuf}/metadata/", "targetsUrl": f"{tuf}/targets/",
                         "credentials": {"bearerTokenFile": str(token)}}}
        cfg = w.agent_config(tmp_path / "dev", extra={**extra, "gateway": {"url": gw.url}})

        code, by = _checks(cfg)
        assert by["gateway git"]["status"] == "ok", by["gateway git"]
        assert by["gateway git"]["message"] == \
            f"{gw.url}/git/fleet.git/info/refs?service=git-upload-pack answers (HTTP 200)"
        assert by["gateway tuf"]["status"] == "ok", by["gateway tuf"]
        assert by["gateway tuf"]["message"] == f"{gw.url}/tuf/metadata/timestamp.json answers (HTTP 200)"
        # the requests reached the gateway itself
        assert any(f[1] == "/git/fleet.git/info/refs" for f in gw.access_log())

        gw.stop()
        code, by = _checks(cfg)
        assert by["gateway git"]["status"] == "warning" and by["gateway tuf"]["status"] == "warning"
        assert "the device polls and downloads from the servers themselves" in by["gateway git"]["message"]
        assert code == 0, by  # the device still works without its gateway ...
        code, _ = _checks(cfg, "--strict")
        assert code == 1  # ... and --strict says it is not as configured

        # a URL that answers but is no gateway (the central nginx): an error, naming what a gateway serves
        not_gw = w.agent_config(tmp_path / "dev2", extra={**extra, "gateway": {"url": f"http://127.0.0.1:{w.git_http.http_port}/nothing"}})
        code, by = _checks(not_gw)
        assert code == 1 and by["gateway git"]["status"] == "error", by["gateway git"]
        assert "answers HTTP 404" in by["gateway git"]["message"]
        assert "/git/fleet.git" in by["gateway git"]["hint"]
    finally:
        if gw is not None:
            gw.stop()
        w.stop()
