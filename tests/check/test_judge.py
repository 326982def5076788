"""The pure core of `modelfleet check`: crafted facts in, the verdict an operator reads out (no server, no clock)."""

from __future__ import annotations

import datetime as dt

from reconciler.check import judge, render
from reconciler.check.model import (
    ERROR,
    OK,
    WARNING,
    AllowedSignersFile,
    Check,
    DeviceBeat,
    DeviceFacts,
    DiskSpace,
    GitInstall,
    HttpProbe,
    OperatorFacts,
    PrivateFile,
    RemoteRef,
    Report,
    RoleExpiry,
    Runtime,
    SigningConfig,
    StateDir,
    StatusKey,
    StatusSnapshot,
    TufMetadata,
)

NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
WEEK = 7 * 86400.0
SIGNED = SigningConfig("~/.ssh/ops.pub", "ssh", True, True, None)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def healthy_roles(**override: RoleExpiry) -> tuple[RoleExpiry, ...]:
    roles = {
        "root": RoleExpiry("root", 1, NOW + 300 * DAY, NOW - 65 * DAY),
        "timestamp": RoleExpiry("timestamp", 40, NOW + dt.timedelta(hours=20), NOW - dt.timedelta(hours=4)),
        "snapshot": RoleExpiry("snapshot", 12, NOW + 6 * DAY, NOW - DAY),
        "targets": RoleExpiry("targets", 9, NOW + 80 * DAY, NOW - 10 * DAY),
    }
    roles.update(override)
    return tuple(roles.values())


def operator(tuf: TufMetadata | None = None, status: StatusSnapshot | None = None) -> OperatorFacts:
    return OperatorFacts(NOW, GitInstall("2.39.5"), SIGNED, RemoteRef("git://h/fleet.git", "main", "a" * 40),
                         tuf if tuf is not None else TufMetadata("https://tuf.example.com/metadata/", "--tuf-url",
                                                                 healthy_roles(), http_status=200),
                         status if status is not None else StatusSnapshot((DeviceBeat("cam-1", "trusted",
                                                                                      age_seconds=60),), (), 300.0))


def test_a_healthy_operator_set_up_is_all_ok() -> None:
    checks = judge.judge_operator(operator(), expiry_warning=WEEK)
    assert [c.status for c in checks] == [OK] * len(checks), checks
    assert [c.name for c in checks] == ["git", "signing", "allowed signers", "fleet repository", "status freshness",
                                        "status trust", "tuf metadata", "tuf root", "tuf timestamp", "tuf snapshot",
                                        "tuf targets"]


def test_an_expired_timestamp_is_an_error_that_says_the_fleet_stops_updating() -> None:
    expired = RoleExpiry("timestamp", 41, NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=26))
    tuf = TufMetadata("tuf/", "--tuf-repo", healthy_roles(timestamp=expired))
    c = by_name(judge.judge_operator(operator(tuf), expiry_warning=WEEK))["tuf timestamp"]
    assert c.status == ERROR
    assert c.message.startswith("version 41 expired 2h0m ago (2026-11-02 10:00 UTC)")
    assert "stop updating models" in c.message and "MetadataExpired" in c.message
    assert "modelfleet repo refresh" in c.hint and "cron" in c.hint
    report = Report("operator", tuple(judge.judge_operator(operator(tuf), expiry_warning=WEEK)))
    assert [x.name for x in report.failed()] == ["tuf timestamp"]


def test_a_role_expiring_within_the_window_is_a_warning() -> None:
    soon = RoleExpiry("targets", 9, NOW + 3 * DAY, NOW - 87 * DAY)
    c = judge.role_check(soon, NOW, WEEK)
    assert (c.status, c.message) == (WARNING, "version 9 expires in 3d0h (2026-11-05 12:00 UTC): when it does, devices "
                                              "stop updating models")
    assert "repo add" in c.hint
    assert judge.role_check(soon, NOW, 2 * 86400.0).status == OK  # --expiry-warning 2d
    root = judge.role_check(RoleExpiry("root", 3, NOW + 3 * DAY), NOW, WEEK)
    assert root.status == WARNING and "rotate-key" in root.hint
    delegated = judge.role_check(RoleExpiry("vision", 2, NOW - DAY, NOW - 91 * DAY), NOW, WEEK)
    assert delegated.status == ERROR and "team" in delegated.hint


def test_short_lived_roles_warn_at_half_their_lifetime_not_at_the_window() -> None:
    # A 1-day timestamp re-signed by cron always expires within 7 days: it warns once half of its day is gone.
    fresh = RoleExpiry("timestamp", 40, NOW + dt.timedelta(hours=20), NOW - dt.timedelta(hours=4))
    late = RoleExpiry("timestamp", 40, NOW + dt.timedelta(hours=10), NOW - dt.timedelta(hours=14))
    assert judge.role_check(fresh, NOW, WEEK).status == OK
    c = judge.role_check(late, NOW, WEEK)
    assert c.status == WARNING and "expires in 10h0m" in c.message and "cron" in c.hint
    # Signing time unknown (no Last-Modified): modelfleet's default lifetime of the role stands in.
    assert judge.role_check(RoleExpiry("timestamp", 1, NOW + dt.timedelta(hours=13)), NOW, WEEK).status == OK
    assert judge.role_check(RoleExpiry("timestamp", 1, NOW + dt.timedelta(hours=11)), NOW, WEEK).status == WARNING


def test_no_tuf_repository_and_an_unreachable_one() -> None:
    none = judge.tuf_checks(None, NOW, WEEK)
    assert [(c.name, c.status) for c in none] == [("tuf metadata", WARNING)] and "--tuf-url" in none[0].hint
    down = judge.tuf_checks(TufMetadata("http://127.0.0.1:9/metadata/", "--tuf-url", error="connection refused"),
                            NOW, WEEK)
    assert [(c.name, c.status) for c in down] == [("tuf metadata", ERROR)] and "connection refused" in down[0].message


def test_stale_heartbeats_and_untrusted_statuses_are_warnings() -> None:
    status = StatusSnapshot((DeviceBeat("cam-1", "trusted", age_seconds=60), DeviceBeat("cam-2", "trusted",
                                                                                        age_seconds=3 * 3600 + 1),
                             DeviceBeat("cam-3", "trusted", age_seconds=None),
                             DeviceBeat("cam-4", "untrusted", "WrongDeviceKey")), ("cam-9",), 3600.0)
    checks = by_name(judge.judge_operator(operator(status=status), expiry_warning=WEEK))
    fresh, trust = checks["status freshness"], checks["status trust"]
    assert fresh.status == WARNING
    assert fresh.message == ("2 of 3 devices have not reported for over 3h (3 heartbeat intervals of 1h): cam-2, "
                             "cam-3; 1 in the inventory never reported")
    assert trust.status == WARNING and trust.message == ("1 device status is untrusted and not counted: cam-4 "
                                                         "(WrongDeviceKey)")
    assert "spec.statusKeys" in trust.hint
    unsigned = judge.status_checks(StatusSnapshot((DeviceBeat("cam-1", "unsigned", age_seconds=5),), (), 300.0))
    assert [(c.status, c.message.split(" (")[0]) for c in unsigned] == [(OK, "1 device reported within 15m"),
                                                                         (WARNING, "1 device reports unsigned status")]


def test_operator_git_and_signing() -> None:
    assert judge.git_check(GitInstall(None, "no git on PATH")).status == ERROR
    assert judge.git_check(GitInstall("2.30.1")).status == ERROR
    assert judge.git_check(GitInstall("2.33.0")).status == WARNING
    assert judge.git_check(GitInstall("2.45.1.windows.1")).status == OK
    unsigned = judge.signing_check(SigningConfig())
    assert unsigned.status == WARNING and "user.signingkey" in unsigned.hint
    missing = judge.signing_check(SigningConfig("~/.ssh/gone.pub", "ssh", True, False))
    assert missing.status == ERROR and "does not exist" in missing.message
    assert judge.signing_check(SigningConfig("ABCD1234", None, None)).status == WARNING  # commit.gpgsign unset


def test_allowed_signers_are_parsed_line_by_line() -> None:
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIIu4EpNqUcZqMgKm9P8w6VfFdBW1xMvjJw5BDxGZ7yT+"
    good = f'# fleet signers\nops@example.com namespaces="git" ssh-ed25519 {key} ops\nci@example.com ssh-ed25519 {key}\n'
    assert judge.parse_allowed_signers(good) == (2, [])
    c = judge.allowed_signers_check(AllowedSignersFile("/home/ops/.ssh/allowed", "gpg.ssh.allowedSignersFile", good))
    assert (c.status, c.message) == (OK, "/home/ops/.ssh/allowed (gpg.ssh.allowedSignersFile): 2 signers")
    bad = good + f"ops@example.com ssh-rsa {key}\nbroken line\n"
    assert judge.parse_allowed_signers(bad) == (2, ["line 4: the key says it is ssh-ed25519, the line says ssh-rsa",
                                                    "line 5: expected PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY"])
    c = judge.allowed_signers_check(AllowedSignersFile("/a", "MODELFLEET_ALLOWED_SIGNERS", bad))
    assert c.status == ERROR and c.message == "/a: line 4: the key says it is ssh-ed25519, the line says ssh-rsa (+1 more)"
    assert judge.allowed_signers_check(AllowedSignersFile("/a", "x", None, "No such file or directory")).status == ERROR
    assert judge.allowed_signers_check(AllowedSignersFile("/a", "x", "# nobody\n")).status == WARNING


def test_the_fleet_repository_failure_says_what_to_do() -> None:
    auth = judge.remote_check(RemoteRef("https://git.example.com/f.git", "main", error="HTTP 401",
                                        reason="AuthenticationFailed"), device=False)
    assert auth.status == ERROR and "--password-file" in auth.hint
    device = judge.remote_check(RemoteRef("https://git.example.com/f.git", "main", error="HTTP 401",
                                          reason="AuthenticationFailed"), device=True)
    assert device.name == "git source" and "source.credentials" in device.hint
    nobranch = judge.remote_check(RemoteRef("git://h/f.git", "prod"), device=False)
    assert nobranch.status == ERROR and nobranch.message == "git://h/f.git has no branch prod"


# -- device side ------------------------------------------------------------------------------------------------

def device(**kw: object) -> DeviceFacts:
    base: dict[str, object] = dict(
        config_path="/etc/modelfleet/agent.yaml", device_id="cam-1",
        private_files=(PrivateFile("source.credentials.passwordFile", "/etc/modelfleet/git-token", "", 0o600),),
        status_key=StatusKey(True, "/var/lib/modelfleet/identity/status_ed25519", "/var/lib/modelfleet/identity/"
                             "status_ed25519", "SHA256:abc"),
        source=RemoteRef("https://git.example.com/f.git", "main", "b" * 40),
        git_http=HttpProbe("Git server", "https://git.example.com/f.git/info/refs", 200, 1.2),
        tuf_http=HttpProbe("TUF server", "https://tuf.example.com/metadata/timestamp.json", 200, -0.4),
        disk=DiskSpace("/var/lib/modelfleet", 20 << 30, ("det 1.0.0 cpu", 400 << 20)),
        runtimes=(Runtime("onnxruntime", "1.20.1", True), Runtime("openvino", None, False)),
        state_dir=StateDir("/var/lib/modelfleet", True, True))
    base.update(kw)
    return DeviceFacts(**base)  # type: ignore[arg-type]


def test_a_healthy_device_is_all_ok() -> None:
    checks = judge.judge_device(device())
    assert [c.status for c in checks] == [OK] * len(checks), checks
    assert by_name(checks)["runtimes"].message == "onnxruntime 1.20.1 (openvino: not installed, not needed)"


def test_a_clock_ten_minutes_off_is_an_error_and_two_minutes_a_warning() -> None:
    off = by_name(judge.judge_device(device(tuf_http=HttpProbe("TUF server", "https://tuf/t.json", 200, 600.0))))
    c = off["clock vs TUF server"]
    assert c.status == ERROR
    assert c.message == "this device's clock is 10m0s behind the TUF server's (https://tuf/t.json)"
    assert "NTP" in c.hint and "TUF expiry" in c.hint
    ahead = judge.clock_check("clock vs Git server", HttpProbe("Git server", "https://g", 200, -120.0))
    assert ahead.status == WARNING and "2m0s ahead of the Git server's" in ahead.message
    assert judge.clock_check("clock vs Git server", None).status == OK  # ssh:// or git://: nothing to measure


def test_a_group_readable_secret_is_an_error_with_chmod() -> None:
    leak = PrivateFile("tuf.credentials.bearerTokenFile", "/etc/modelfleet/tuf-token",
                       "permissions 0644 for credential file /etc/modelfleet/tuf-token are too open (it must not be "
                       "readable by group or others: chmod 600 /etc/modelfleet/tuf-token)", 0o644)
    checks = by_name(judge.judge_device(device(private_files=(leak,))))
    c = checks["tuf.credentials.bearerTokenFile"]
    assert c.status == ERROR and "0644" in c.message and c.hint == "chmod 600 /etc/modelfleet/tuf-token"
    assert "secret files" not in checks
    gone = judge.private_file_checks(device(private_files=(PrivateFile("tuf.decryptionKey", "/k",
                                                                       "credential file /k does not exist"),)))
    assert gone[0].status == ERROR and gone[0].hint.startswith("create it")


def test_no_status_key_is_a_warning_that_says_keygen() -> None:
    c = by_name(judge.judge_device(device(status_key=StatusKey(True, None, "/var/lib/modelfleet/identity/"
                                                                          "status_ed25519"))))["status key"]
    assert c.status == WARNING
    assert c.message.startswith("no status signing key at /var/lib/modelfleet/identity/status_ed25519: status will "
                                "be unsigned")
    assert "modelfleet agent keygen" in c.hint
    off = judge.status_key_check(StatusKey(False))
    assert off.status == OK and "status.enabled: false" in off.message


def test_a_config_that_does_not_load_is_the_only_check() -> None:
    checks = judge.judge_device(DeviceFacts("/etc/modelfleet/agent.yaml", config_error="/etc/modelfleet/agent.yaml:7:"
                                                                                     " invalid YAML: …"))
    assert [(c.name, c.status) for c in checks] == [("config", ERROR)]
    assert checks[0].message.startswith("/etc/modelfleet/agent.yaml:7:")


def test_disk_runtimes_state_dir_and_tuf_server() -> None:
    full = judge.disk_check(DiskSpace("/var/lib/modelfleet", 300 << 20, ("det 2.0.0 cpu", 400 << 20)))
    assert full.status == ERROR and "InsufficientDiskSpace" in full.message and "det 2.0.0 cpu" in full.message
    one = judge.disk_check(DiskSpace("/var/lib/modelfleet", 600 << 20, ("det 2.0.0 cpu", 400 << 20)))
    assert one.status == WARNING and "room for one such download only" in one.message
    unknown = judge.disk_check(DiskSpace("/var/lib/modelfleet", 500 << 20))
    assert unknown.status == WARNING and "checked against 1.0 GiB" in unknown.message
    none = judge.runtimes_check((Runtime("onnxruntime"), Runtime("openvino")))
    assert none.status == ERROR
    needed = judge.runtimes_check((Runtime("onnxruntime", "1.20.1", True), Runtime("openvino", None, True)))
    assert needed.status == WARNING and needed.hint == "pip install 'modelfleet[openvino]'"
    assert judge.state_dir_check(StateDir("/var/lib/modelfleet", True, False, "Permission denied")).status == ERROR
    assert judge.state_dir_check(StateDir("/var/lib/modelfleet", False, True)).status == OK
    assert judge.tuf_server_check(HttpProbe("TUF server", "https://t/timestamp.json", 401)).status == ERROR
    assert judge.tuf_server_check(HttpProbe("TUF server", "https://t/timestamp.json", 404)).status == ERROR
    assert judge.tuf_server_check(HttpProbe("TUF server", "", note="no URL")).status == WARNING


def test_strict_fails_on_warnings_and_the_table_escapes_what_servers_and_devices_wrote() -> None:
    report = Report("operator", (Check("git", OK, "git 2.39.5"), Check("status trust", WARNING,
                                                                       "untrusted: cam-\x1b[2J1", "do x")))
    assert report.failed() == [] and [c.name for c in report.failed(strict=True)] == ["status trust"]
    text = render.table(report)
    assert "\x1b" not in text and "cam-\\x1b[2J1" in text and "→ do x" in text
    assert text.splitlines()[-1] == "operator side: 2 checks, 1 ok, 1 warning, 0 errors"


def test_a_gateway_that_is_down_warns_and_one_that_refuses_the_device_fails() -> None:
    url = "https://gw.site-1/git/fleet.git/info/refs?service=git-upload-pack"
    assert "gateway git" not in by_name(judge.judge_device(device()))  # no gateway in the config: no row
    up = by_name(judge.judge_device(device(gateway_git=HttpProbe("gateway (Git)", url, 200, 0.3),
                                           gateway_tuf=HttpProbe("gateway (TUF)", "https://gw/tuf/t.json", 200))))
    assert up["gateway git"].status == OK and up["gateway tuf"].status == OK
    assert up["gateway git"].message == f"{url} answers (HTTP 200)"
    # the agent goes to the servers themselves while its gateway does not answer: a warning, saying so
    down = judge.gateway_check("gateway git", HttpProbe("gateway (Git)", url, error="Connection refused"))
    assert down.status == WARNING and "Connection refused" in down.message
    assert "from the servers themselves" in down.message and "gateway run" in down.hint
    assert judge.gateway_check("gateway git", HttpProbe("gateway (Git)", url, 401)).status == ERROR
    assert judge.gateway_check("gateway tuf", HttpProbe("gateway (TUF)", url, 404)).status == ERROR
    refused = judge.gateway_check("gateway git", HttpProbe("gateway (Git)", url, error=f"{url} refused the client "
                                                           "certificate (SSLError)", cert_refused=True))
    assert refused.status == ERROR and "clientCertFile" in refused.hint
