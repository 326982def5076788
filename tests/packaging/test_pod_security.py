"""The Pod Security Standards evaluator (tests/_pod_security.py), one test per control.

Each case is a control of the standard, a pod that violates it, and the fix. The violating pod is refused at the
control's level and above and admitted below it; the fixed pod (and the fully compliant base pod) passes
Restricted. tests/packaging/test_k3s.py uses the evaluator on the shipped manifests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests._pod_security import CHECKS, LEVELS, namespace_levels, pod_template, violations

Pod = dict[str, Any]

_HARDENED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restricted_pod() -> Pod:
    """A pod that meets Restricted: non-root, RuntimeDefault seccomp, no escalation, all capabilities dropped,
    core volume types only."""
    return {
        "metadata": {"name": "p", "annotations": {}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "init", "image": "i", "securityContext": copy.deepcopy(_HARDENED)}],
            "containers": [{
                "name": "app", "image": "i", "securityContext": copy.deepcopy(_HARDENED),
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": "http"}}},
            }],
            "volumes": [{"name": "config", "configMap": {"name": "c"}}, {"name": "tmp", "emptyDir": {}},
                        {"name": "keys", "secret": {"secretName": "k"}},
                        {"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}],
        },
    }


def app(pod: Pod) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def init(pod: Pod) -> dict[str, Any]:
    return pod["spec"]["initContainers"][0]


def pod_sc(pod: Pod) -> dict[str, Any]:
    return pod["spec"]["securityContext"]


def setter(path: Callable[[Pod], dict[str, Any]], key: str, value: Any) -> Callable[[Pod], None]:
    def apply(pod: Pod) -> None:
        path(pod)[key] = value
    return apply


def app_sc(key: str, value: Any) -> Callable[[Pod], None]:
    return setter(lambda p: app(p)["securityContext"], key, value)


def init_sc(key: str, value: Any) -> Callable[[Pod], None]:
    return setter(lambda p: init(p)["securityContext"], key, value)


def add_volume(volume: dict[str, Any]) -> Callable[[Pod], None]:
    return lambda pod: pod["spec"]["volumes"].append(volume)


def annotate(key: str, value: str) -> Callable[[Pod], None]:
    return setter(lambda p: p["metadata"]["annotations"], key, value)


# (check ID, a violation, its fix): the fix is an allowed value of the same field where the standard has one.
CASES: list[tuple[str, Callable[[Pod], None], Callable[[Pod], None]]] = [
    ("windowsHostProcess", app_sc("windowsOptions", {"hostProcess": True}),
     app_sc("windowsOptions", {"hostProcess": False})),
    ("windowsHostProcess", setter(pod_sc, "windowsOptions", {"hostProcess": True}),
     setter(pod_sc, "windowsOptions", {})),
    ("hostNamespaces", setter(lambda p: p["spec"], "hostNetwork", True),
     setter(lambda p: p["spec"], "hostNetwork", False)),
    ("hostNamespaces", setter(lambda p: p["spec"], "hostPID", True), setter(lambda p: p["spec"], "hostPID", False)),
    ("hostNamespaces", setter(lambda p: p["spec"], "hostIPC", True), setter(lambda p: p["spec"], "hostIPC", False)),
    ("privileged", init_sc("privileged", True), init_sc("privileged", False)),
    # CHOWN is in the runtime's default set: Baseline allows adding it, Restricted does not (below).
    ("capabilities_baseline", app_sc("capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
     app_sc("capabilities", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})),
    ("hostPathVolumes", add_volume({"name": "host", "hostPath": {"path": "/var/lib/x"}}),
     add_volume({"name": "host", "persistentVolumeClaim": {"claimName": "x"}})),
    ("hostPorts", lambda p: app(p)["ports"][0].update(hostPort=8080),
     lambda p: app(p)["ports"][0].update(hostPort=0)),
    ("appArmorProfile", app_sc("appArmorProfile", {"type": "Unconfined"}),
     app_sc("appArmorProfile", {"type": "RuntimeDefault"})),
    ("appArmorProfile", setter(pod_sc, "appArmorProfile", {"type": "Unconfined"}),
     setter(pod_sc, "appArmorProfile", {"type": "Localhost", "localhostProfile": "x"})),
    ("appArmorProfile", annotate("container.apparmor.security.beta.kubernetes.io/app", "unconfined"),
     annotate("container.apparmor.security.beta.kubernetes.io/app", "localhost/x")),
    ("seLinuxOptions", app_sc("seLinuxOptions", {"type": "spc_t"}),
     app_sc("seLinuxOptions", {"type": "container_init_t"})),
    ("seLinuxOptions", setter(pod_sc, "seLinuxOptions", {"user": "system_u"}),
     setter(pod_sc, "seLinuxOptions", {"level": "s0:c123,c456"})),
    ("seLinuxOptions", init_sc("seLinuxOptions", {"role": "sysadm_r"}), init_sc("seLinuxOptions", {"type": ""})),
    ("procMount", app_sc("procMount", "Unmasked"), app_sc("procMount", "Default")),
    ("seccompProfile_baseline", app_sc("seccompProfile", {"type": "Unconfined"}),
     app_sc("seccompProfile", {"type": "Localhost", "localhostProfile": "p.json"})),
    ("sysctls", setter(pod_sc, "sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
     setter(pod_sc, "sysctls", [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}])),
    ("hostProbesAndHostLifecycle", lambda p: app(p)["readinessProbe"]["httpGet"].update(host="10.0.0.1"),
     lambda p: app(p)["readinessProbe"]["httpGet"].update(host="")),
    ("hostProbesAndHostLifecycle", lambda p: app(p)["lifecycle"]["preStop"]["httpGet"].update(host="example.com"),
     lambda p: app(p)["lifecycle"]["preStop"]["httpGet"].pop("host", None)),
    ("restrictedVolumes", add_volume({"name": "nfs", "nfs": {"server": "s", "path": "/"}}),
     add_volume({"name": "nfs", "csi": {"driver": "nfs.csi.k8s.io"}})),
    ("allowPrivilegeEscalation", init_sc("allowPrivilegeEscalation", True),
     init_sc("allowPrivilegeEscalation", False)),
    ("allowPrivilegeEscalation", lambda p: app(p)["securityContext"].pop("allowPrivilegeEscalation"),
     app_sc("allowPrivilegeEscalation", False)),
    ("runAsNonRoot", init_sc("runAsNonRoot", False), init_sc("runAsNonRoot", True)),
    ("runAsNonRoot", lambda p: pod_sc(p).pop("runAsNonRoot"),
     lambda p: [c["securityContext"].update(runAsNonRoot=True) for c in (app(p), init(p))]),
    ("runAsUser", init_sc("runAsUser", 0), init_sc("runAsUser", 10001)),
    ("runAsUser", setter(pod_sc, "runAsUser", 0), setter(pod_sc, "runAsUser", 1000)),
    ("seccompProfile_restricted", lambda p: pod_sc(p).pop("seccompProfile"),
     lambda p: [c["securityContext"].update(seccompProfile={"type": "RuntimeDefault"}) for c in (app(p), init(p))]),
    ("capabilities_restricted", app_sc("capabilities", {"drop": ["ALL"], "add": ["CHOWN"]}),
     app_sc("capabilities", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})),
    ("capabilities_restricted", init_sc("capabilities", {"drop": ["NET_RAW"]}),
     init_sc("capabilities", {"drop": ["ALL"]})),
]


def test_the_base_pod_meets_every_level() -> None:
    for level in LEVELS:
        assert violations(restricted_pod(), level) == []


def test_every_control_has_a_case() -> None:
    assert {check for check, _, _ in CASES} == set(CHECKS)


@pytest.mark.parametrize(("check", "violate", "fix"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_pod_violating_a_control_is_refused_at_its_level_and_the_fixed_pod_passes(
        check: str, violate: Callable[[Pod], None], fix: Callable[[Pod], None]) -> None:
    level = CHECKS[check][0]
    bad, good = restricted_pod(), restricted_pod()
    violate(bad)
    fix(good)
    for at in LEVELS:
        found = {v.check for v in violations(bad, at)}
        if LEVELS.index(at) < LEVELS.index(level):
            assert check not in found, (at, found)
        elif check == "hostPathVolumes" and at == "restricted":
            assert found == {"restrictedVolumes"}  # Restricted's volume-type control covers hostPath there
        else:
            assert check in found, (at, found)
        assert violations(good, at) == [], (at, violations(good, at))


def test_capabilities_from_the_default_set_are_baseline_but_not_restricted() -> None:
    pod = restricted_pod()
    init(pod)["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert violations(pod, "baseline") == []
    assert [v.check for v in violations(pod, "restricted")] == ["capabilities_restricted"]


def test_windows_pods_are_exempt_from_the_linux_only_restricted_controls() -> None:
    pod = restricted_pod()
    pod["spec"]["os"] = {"name": "windows"}
    del pod_sc(pod)["seccompProfile"]
    for c in (app(pod), init(pod)):
        c["securityContext"] = {}
    assert violations(pod, "restricted") == []


def test_pod_templates_and_namespace_labels() -> None:
    spec = restricted_pod()["spec"]
    daemonset = {"kind": "DaemonSet", "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}}}
    cronjob = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}
    assert pod_template(daemonset) == {"metadata": {"labels": {"a": "b"}}, "spec": spec}
    assert pod_template(cronjob) == {"metadata": {}, "spec": spec}
    assert pod_template({"kind": "Service", "spec": {}}) is None
    assert namespace_levels({"metadata": {}}) == dict.fromkeys(("enforce", "audit", "warn"), "privileged")
    ns = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}
    assert namespace_levels(ns)["enforce"] == "baseline"
    with pytest.raises(ValueError, match="unknown level"):
        namespace_levels({"metadata": {"labels": {"pod-security.kubernetes.io/warn": "strict"}}})
    with pytest.raises(ValueError, match="unknown Pod Security level"):
        violations(restricted_pod(), "strict")
