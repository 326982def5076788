"""Agent config loading: defaults, relative paths, and file:line errors through the CLI."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.agent.config import load_agent_config, parse_agent_config
from reconciler.agent.sdnotify import Notifier, watchdog_interval
from reconciler.core.errors import UserError
from reconciler.core.logs import fields, setup_logging
from reconciler.distribution import tufclient

MINIMAL = """\
apiVersion: modelfleet/v1
kind: AgentConfig
spec:
  deviceId: dev-1
  stateDir: state
  source:
    url: file:///srv/fleet.git
  tuf:
    trustedRoot: keys/root.json
"""


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL)
    c = load_agent_config(f)
    assert c.device_id == "dev-1"
    assert c.state_dir == tmp_path.resolve() / "state"
    assert c.trusted_root == tmp_path.resolve() / "keys/root.json"
    assert (c.source_branch, c.verify_mode, c.serving_port, c.log_format) == ("main", "none", 8080, "text")
    assert c.poll_interval is None and c.max_concurrent_downloads == 2 and c.tuf_timeout == 30.0
    assert c.tuf_min_rate == tufclient.DEFAULT_MIN_RATE == 4096


def test_tuf_download_deadline_settings(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL + "    timeout: 500ms\n    minBytesPerSecond: 65536\n")
    c = load_agent_config(f)
    assert (c.tuf_timeout, c.tuf_min_rate) == (0.5, 65536)
    f.write_text(MINIMAL + "    minBytesPerSecond: 0\n")
    with pytest.raises(UserError, match="spec.tuf.minBytesPerSecond"):
        load_agent_config(f)


def test_schema_error_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL + "  pollInterval: soon\n")
    with pytest.raises(UserError) as ei:
        load_agent_config(f)
    assert f"{f.resolve()}:10: spec.pollInterval" in str(ei.value)


def test_verify_needs_a_trust_anchor() -> None:
    text = MINIMAL.replace("    url: file:///srv/fleet.git\n", "    url: x\n    verify:\n      mode: head\n")
    with pytest.raises(UserError, match=r":9: verify mode 'head' needs allowedSigners"):
        parse_agent_config(text, Path("/etc/modelfleet/agent.yaml"))


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"agent.yaml:2: invalid YAML"):
        parse_agent_config("a: b\n  c: [\n", Path("agent.yaml"))
    with pytest.raises(UserError, match="agent config not found"):
        load_agent_config(tmp_path / "nope.yaml")


def test_cli_prints_error_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL.replace("dev-1", "Dev_1"))
    r = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "agent", "once", "--config", str(f)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert "spec.deviceId" in r.stderr and "Traceback" not in r.stderr


def test_sdnotify_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert n.ready("serving 1 endpoint")
        assert srv.recv(1024) == b"READY=1\nSTATUS=serving 1 endpoint"
        assert n.watchdog() and srv.recv(1024) == b"WATCHDOG=1"
        assert n.watchdog_interval() == 2.0
    finally:
        srv.close()
    assert not Notifier({}).ready()
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None


def test_json_and_text_logs(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import json

    buf = io.StringIO()
    setup_logging("json", "info", buf)
    logging.getLogger("reconciler.agent").info("applied", extra=fields(endpoint="det", version="1.1.0"))
    rec = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert (rec["msg"], rec["endpoint"], rec["level"]) == ("applied", "det", "info")
    buf2 = io.StringIO()
    setup_logging("text", "info", buf2)
    logging.getLogger("reconciler.agent").info("poll", extra=fields(commit="abc", message="two words"))
    assert buf2.getvalue().strip() == 'INFO reconciler.agent: poll commit=abc message="two words"'


class _Shown:
    def __init__(self, tok: str) -> None:
        self.tok = tok

    def __str__(self) -> str:  # a field value that is not JSON: logged through str()
        return f"https://{self.tok}@h/x"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_carry_url_userinfo(fmt: str) -> None:
    """The last line of defence: a URL with a token that got past every check is masked in the log line itself,
    in the message, in structured fields and in an exception's traceback."""
    import io

    buf = io.StringIO()
    setup_logging(fmt, "info", buf)
    tok = "ghp_L0gLeak9f8e7d6c5b4a"
    log = logging.getLogger("reconciler.agent")
    log.info("ls-refs at https://%s@github.com/o/fleet.git failed", tok,
             extra=fields(url=f"HTTPS://{tok}@h/r", nested={"u": [f"https://x:{tok}@h"]}, obj=_Shown(tok)))
    try:
        raise RuntimeError(f"fatal: unable to access 'https://{tok}%40h/r/': 403")
    except RuntimeError:
        log.exception("push failed")
    out = buf.getvalue()
    assert tok not in out and out.count("***@") >= 5, out


CREDS = """\
apiVersion: modelfleet/v1
kind: AgentConfig
spec:
  deviceId: dev-1
  source:
    url: https://git.example.com/fleet.git
    credentials: {username: dev-1, passwordFile: "${CREDENTIALS_DIRECTORY}/git-read", caFile: ca.pem}
  status:
    credentials: {username: dev-1, passwordFile: secrets/push}
  tuf:
    trustedRoot: root.json
    credentials: {bearerTokenFile: secrets/tuf}
"""


def test_credentials_are_paths_resolved_per_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/modelfleet-agent.service")
    f = tmp_path / "agent.yaml"
    f.write_text(CREDS)
    c = load_agent_config(f)
    base = tmp_path.resolve()
    assert c.source_credentials.password_file == Path("/run/credentials/modelfleet-agent.service/git-read")
    assert c.source_credentials.ca_file == base / "ca.pem" and c.source_credentials.username == "dev-1"
    assert c.status_credentials is not None and c.status_credentials.password_file == base / "secrets/push"
    assert c.tuf_credentials.bearer_token_file == base / "secrets/tuf"


def test_proxy_and_tls_settings_are_read_per_endpoint(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(CREDS.replace("caFile: ca.pem}", "extraCaFile: ca.pem, proxy: 'proxy.corp:3128'}")
                 .replace("{bearerTokenFile: secrets/tuf}", "{bearerTokenFile: secrets/tuf, proxy: direct, "
                          "clientCertFile: dev.pem, clientKeyFile: dev.key}"))
    c = load_agent_config(f)
    base = tmp_path.resolve()
    assert c.source_credentials.proxy == "http://proxy.corp:3128" and c.source_credentials.ca_file is None
    assert c.source_credentials.extra_ca_file == base / "ca.pem"
    assert c.status_credentials is not None and c.status_credentials.proxy is None  # the environment's
    assert c.tuf_credentials.proxy == "direct"
    assert (c.tuf_credentials.client_cert_file, c.tuf_credentials.client_key_file) == (base / "dev.pem",
                                                                                      base / "dev.key")


@pytest.mark.parametrize(("old", "new", "error"), [
    ("url: https://git.example.com/fleet.git", "url: https://dev-1:hunter2@git.example.com/fleet.git",
     "agent.yaml:6: spec.source.url https://***@git.example.com/fleet.git holds userinfo"),
    ("url: https://git.example.com/fleet.git", "url: https://hunter2@git.example.com/fleet.git",
     "agent.yaml:6: spec.source.url https://***@git.example.com/fleet.git holds userinfo"),
    ("credentials: {username: dev-1, passwordFile: secrets/push}", "credentials: {username: dev-1}",
     "agent.yaml:9: credentials.username and credentials.passwordFile go together"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, token: x",
     "unknown field spec.tuf.credentials.token (hint: allowed fields: bearerTokenFile, caFile, clientCertFile, "
     "clientKeyFile, extraCaFile, passwordFile, proxy, proxyPasswordFile, proxyUsername, username)"),
    # a proxy's credentials are refused in the URL like the origin's (they would show in logs and status)
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, proxy: 'http://egress:hunter2@proxy.corp:3128'",
     "agent.yaml:12: spec.tuf.credentials.proxy http://***@proxy.corp:3128 holds userinfo"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, proxy: 'egress:hunter2@proxy.corp:3128'",
     "agent.yaml:12: spec.tuf.credentials.proxy http://***@proxy.corp:3128 holds userinfo"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, proxy: 'socks5://proxy.corp:1080'",
     "agent.yaml:12: spec.tuf.credentials.proxy: proxy scheme socks5:// is not supported (only http:// and "
     "https:// proxies) (or `direct` for no proxy)"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, clientKeyFile: k.pem",
     "agent.yaml:12: credentials.clientKeyFile needs clientCertFile"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, proxyUsername: egress",
     "agent.yaml:12: proxyUsername and proxyPasswordFile go together"),
    ("bearerTokenFile: secrets/tuf", "bearerTokenFile: t, proxys: direct",
     "unknown field spec.tuf.credentials.proxys (hint: did you mean 'proxy'?)"),
])
def test_bad_credentials_settings(tmp_path: Path, old: str, new: str, error: str) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(CREDS.replace(old, new))
    with pytest.raises(UserError) as exc:
        load_agent_config(f)
    assert error in str(exc.value) and "hunter2" not in str(exc.value)


def test_a_misspelt_field_gets_the_did_you_mean_of_validate(tmp_path: Path) -> None:
    """`devicId` used to be a raw jsonschema line ("Additional properties are not allowed ('devicId' was
    unexpected)"); the agent now says what `modelfleet validate` says of a manifest, at the key's line."""
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL.replace("deviceId: dev-1", "devicId: dev-1").replace("trustedRoot:", "trustedRot:"))
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", "agent", "run", "--config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{f.resolve()}:4: unknown field spec.devicId (hint: did you mean 'deviceId'?)" in r.stderr, r.stderr
    assert f"{f.resolve()}:9: unknown field spec.tuf.trustedRot (hint: did you mean 'trustedRoot'?)" in r.stderr
    assert "Additional properties" not in r.stderr


def test_device_id_from_the_environment(tmp_path: Path) -> None:
    shared = MINIMAL.replace("deviceId: dev-1", "deviceIdEnv: NODE_NAME")
    assert parse_agent_config(shared, tmp_path / "a.yaml", environ={"NODE_NAME": "k3s-edge-7"}).device_id == "k3s-edge-7"
    with pytest.raises(UserError, match=r"a.yaml:4: spec.deviceIdEnv: environment variable NODE_NAME is not set"):
        parse_agent_config(shared, tmp_path / "a.yaml", environ={})
    with pytest.raises(UserError, match=r"a.yaml:4: NODE_NAME='Edge_7' is not a valid device id"):
        parse_agent_config(shared, tmp_path / "a.yaml", environ={"NODE_NAME": "Edge_7"})
    both = MINIMAL.replace("deviceId: dev-1", "deviceId: dev-1\n  deviceIdEnv: NODE_NAME")
    with pytest.raises(UserError, match="give exactly one of spec.deviceId and spec.deviceIdEnv"):
        parse_agent_config(both, tmp_path / "a.yaml", environ={"NODE_NAME": "n1"})
    with pytest.raises(UserError, match="give exactly one of spec.deviceId and spec.deviceIdEnv"):
        parse_agent_config(MINIMAL.replace("  deviceId: dev-1\n", ""), tmp_path / "a.yaml", environ={})


def test_status_push_spread(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL)
    assert load_agent_config(f).status_push_spread == 0.0  # push at once unless asked
    f.write_text(MINIMAL + "  status:\n    pushSpread: 10s\n")
    assert load_agent_config(f).status_push_spread == 10.0
    f.write_text(MINIMAL + "  status:\n    pushSpread: later\n")
    with pytest.raises(UserError, match=r"agent.yaml:11: spec.status.pushSpread"):
        load_agent_config(f)


def test_capture_allowed_origins_are_https_origins_normalised(tmp_path: Path) -> None:
    text = MINIMAL + "  capture:\n    allowedOrigins: [https://Capture.Example.com/, 'https://[::1]:8443']\n"
    c = parse_agent_config(text, tmp_path / "agent.yaml")
    assert c.capture_allowed_origins == ("https://capture.example.com:443", "https://[::1]:8443")
    for bad in ("http://capture.example.com", "https://capture.example.com/vibration", "capture.example.com"):
        with pytest.raises(UserError, match=r"agent.yaml:11: spec.capture.allowedOrigins.0: .* does not match"):
            parse_agent_config(MINIMAL + f"  capture:\n    allowedOrigins: ['{bad}']\n", tmp_path / "agent.yaml")
    with pytest.raises(UserError, match=r"agent.yaml:11: spec.capture.allowedOrigins\[0\] https://\*\*\*@capture"
                                        r".* holds userinfo .* spec.capture.uploadTokenFile") as err:
        parse_agent_config(MINIMAL + "  capture:\n    allowedOrigins: ['https://tok3n@capture.example.com']\n",
                           tmp_path / "agent.yaml")
    assert "tok3n" not in str(err.value)
    with pytest.raises(UserError, match=r"agent.yaml:11: capture.allowedOrigins\[0\] 'https://h:99999' is not"):
        parse_agent_config(MINIMAL + "  capture:\n    allowedOrigins: ['https://h:99999']\n", tmp_path / "agent.yaml")


def test_pin_workers_is_a_boolean_or_left_to_the_pool(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL)
    assert load_agent_config(f).serving_pin_workers is None  # the pool decides: one worker per allowed CPU
    f.write_text(MINIMAL + "  serving:\n    workers: 2\n    pinWorkers: false\n")
    assert load_agent_config(f).serving_pin_workers is False
    f.write_text(MINIMAL + "  serving:\n    workers: 2\n    pinWorkers: sometimes\n")
    with pytest.raises(UserError, match="pinWorkers"):
        load_agent_config(f)


def test_capture_takes_the_same_proxy_and_tls_settings(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    capture = ("  capture:\n    caFile: ca.pem\n    proxy: http://egress.corp:3128\n    clientCertFile: dev.pem\n"
               "    proxyUsername: egress\n    proxyPasswordFile: secrets/proxy\n")
    f.write_text(CREDS + capture)
    c = load_agent_config(f)
    base = tmp_path.resolve()
    assert c.capture_tls.proxy == "http://egress.corp:3128" and c.capture_tls.ca_file == base / "ca.pem"
    assert c.capture_tls.client_cert_file == base / "dev.pem" and c.capture_tls.client_key_path == base / "dev.pem"
    assert c.capture_tls.proxy_password_file == base / "secrets/proxy"
    f.write_text(CREDS + capture.replace("http://egress.corp", "http://egress:hunter2@egress.corp"))
    with pytest.raises(UserError) as exc:
        load_agent_config(f)
    assert "agent.yaml:15: spec.capture.proxy http://***@egress.corp:3128 holds userinfo" in str(exc.value)
    assert "hunter2" not in str(exc.value) and "proxyPasswordFile" in str(exc.value)


@pytest.mark.parametrize(("field", "url", "problem"), [
    ("gateway", "not a url", "holds a space or a control character"),
    ("gateway", "http://[::1", "does not parse (Invalid IPv6 URL)"),
    ("gateway", "gw.site-7.lan:8780", "is not an http:// or https:// URL"),
    ("gateway", "http://gw:99999", "does not parse (Port out of range 0-65535)"),
    ("gateway", "http://gw\x1b[2J:8780", "holds a space or a control character"),
    ("gateway", "http:///tuf", "has no host"),
    ("tuf", "ftp://tuf.example.com/metadata/", "is not an http:// or https:// URL"),
])
def test_an_http_url_that_is_not_one_is_refused_at_load(tmp_path: Path, field: str, url: str, problem: str) -> None:
    text = MINIMAL.replace("    trustedRoot: keys/root.json\n", "    trustedRoot: keys/root.json\n"
                           + (f"    metadataUrl: {json.dumps(url)}\n" if field == "tuf" else ""))
    if field == "gateway":
        text += f"  gateway:\n    url: {json.dumps(url)}\n"
    with pytest.raises(UserError) as err:
        parse_agent_config(text, tmp_path / "agent.yaml")
    line = 10 if field == "tuf" else 11
    key = "tuf.metadataUrl" if field == "tuf" else "gateway.url"
    assert str(err.value).startswith(f"{tmp_path / 'agent.yaml'}:{line}: spec.{key} ") and problem in str(err.value)
    assert "\x1b" not in str(err.value)
    parse_agent_config(MINIMAL + "  gateway:\n    url: 'http://[fd00::7]:8780/'\n", tmp_path / "agent.yaml")  # fine


def test_capture_sealer_is_a_process_unless_the_config_says_thread(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(MINIMAL)
    assert load_agent_config(f).capture_sealer == "process"
    f.write_text(MINIMAL + "  capture:\n    sealer: thread\n")
    assert load_agent_config(f).capture_sealer == "thread"
    f.write_text(MINIMAL + "  capture:\n    sealer: fork\n")
    with pytest.raises(UserError) as ei:
        load_agent_config(f)
    assert f"{f.resolve()}:11: spec.capture.sealer" in str(ei.value)
