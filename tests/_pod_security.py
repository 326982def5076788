"""The Kubernetes Pod Security Standards (Baseline and Restricted, version "latest"), evaluated on a pod spec.

No maintained checker installs here without a cluster (the reference is the Go package
k8s.io/pod-security-admission, which the Pod Security admission controller runs; no PyPI, npm or Debian package
wraps it), so this module implements the controls as the standard documents them
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Profile Details"), one function per
control, named by the admission controller's check ID. ``tests/packaging/test_pod_security.py`` has a test per
control: a pod that violates it is refused at its level and above, and the fixed pod passes.

Where the standard's allowed values grew across Kubernetes releases (sysctls, SELinux types, probe hosts), the
latest release's are used: a namespace label without ``-version`` means ``latest``.

Use: :func:`violations` of a pod template (``metadata`` + ``spec``) at a level; :func:`pod_template` finds it in
a Pod or a workload resource; :func:`namespace_levels` reads a Namespace's ``pod-security.kubernetes.io/*``
labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

LEVELS = ("privileged", "baseline", "restricted")
MODES = ("enforce", "audit", "warn")

Pod = dict[str, Any]  # {"metadata": {...}, "spec": {...}}


@dataclass(frozen=True)
class Violation:
    check: str  # the admission controller's check ID, e.g. "hostPathVolumes"
    level: str  # the lowest level that forbids it
    detail: str


def _spec(pod: Pod) -> dict[str, Any]:
    return pod.get("spec") or {}


def _containers(pod: Pod) -> Iterator[dict[str, Any]]:
    spec = _spec(pod)
    for key in ("containers", "initContainers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def _windows(pod: Pod) -> bool:
    return ((_spec(pod).get("os") or {}).get("name")) == "windows"


# -- Baseline ---------------------------------------------------------------------------------------------------

def host_process(pod: Pod) -> list[str]:
    """Windows HostProcess containers: ``windowsOptions.hostProcess`` must be unset or false (pod, containers)."""
    bad = []
    if (_sc(_spec(pod)).get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod")
    bad += [c["name"] for c in _containers(pod) if (_sc(c).get("windowsOptions") or {}).get("hostProcess")]
    return bad


def host_namespaces(pod: Pod) -> list[str]:
    """Host namespaces: ``hostNetwork``, ``hostPID``, ``hostIPC`` must be unset or false."""
    return [f for f in ("hostNetwork", "hostPID", "hostIPC") if _spec(pod).get(f)]


def privileged(pod: Pod) -> list[str]:
    """Privileged containers: ``securityContext.privileged`` must be unset or false."""
    return [c["name"] for c in _containers(pod) if _sc(c).get("privileged")]


BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def capabilities_baseline(pod: Pod) -> list[str]:
    """Capabilities: ``capabilities.add`` only from the runtime's default set."""
    return [f"{c['name']}: {cap}" for c in _containers(pod)
            for cap in (_sc(c).get("capabilities") or {}).get("add") or [] if cap not in BASELINE_CAPABILITIES]


def host_path_volumes(pod: Pod) -> list[str]:
    """HostPath volumes: forbidden."""
    return [v["name"] for v in _spec(pod).get("volumes") or [] if "hostPath" in v]


def host_ports(pod: Pod) -> list[str]:
    """Host ports: ``ports[*].hostPort`` unset or 0."""
    return [f"{c['name']}: {p['hostPort']}" for c in _containers(pod) for p in c.get("ports") or []
            if p.get("hostPort")]


_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def app_armor_profile(pod: Pod) -> list[str]:
    """AppArmor: profile type ``RuntimeDefault`` or ``Localhost`` (or unset), the annotation ``runtime/default``
    or ``localhost/*``; ``Unconfined`` is forbidden."""
    bad = []
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(_APPARMOR_ANNOTATION) and not (value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"{key}={value}")
    for who, sc in [("pod", _sc(_spec(pod)))] + [(c["name"], _sc(c)) for c in _containers(pod)]:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind is not None and kind not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{who}: {kind}")
    return bad


SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


def se_linux_options(pod: Pod) -> list[str]:
    """SELinux: ``seLinuxOptions.type`` from the container types only; ``user`` and ``role`` unset."""
    bad = []
    for who, sc in [("pod", _sc(_spec(pod)))] + [(c["name"], _sc(c)) for c in _containers(pod)]:
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES or opts.get("user") or opts.get("role"):
            bad.append(who)
    return bad


def proc_mount(pod: Pod) -> list[str]:
    """/proc mount type: ``procMount`` unset or ``Default``."""
    return [c["name"] for c in _containers(pod) if _sc(c).get("procMount", "Default") != "Default"]


def seccomp_profile_baseline(pod: Pod) -> list[str]:
    """Seccomp: the profile must not be ``Unconfined`` (pod or container)."""
    return [who for who, sc in [("pod", _sc(_spec(pod)))] + [(c["name"], _sc(c)) for c in _containers(pod)]
            if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"]


SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"})


def sysctls(pod: Pod) -> list[str]:
    """Sysctls: only the namespaced, isolated "safe" set."""
    return [s["name"] for s in _sc(_spec(pod)).get("sysctls") or [] if s["name"] not in SAFE_SYSCTLS]


def host_probes_and_host_lifecycle(pod: Pod) -> list[str]:
    """Probe and lifecycle hosts: ``httpGet.host`` / ``tcpSocket.host`` of probes and lifecycle handlers unset."""
    bad = []
    for c in _containers(pod):
        handlers = [c.get(p) for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(c.get("lifecycle") or {}).get(h) for h in ("postStart", "preStop")]
        for h in handlers:
            for action in ("httpGet", "tcpSocket"):
                if ((h or {}).get(action) or {}).get("host"):
                    bad.append(f"{c['name']}: {h[action]['host']}")
    return bad


# -- Restricted -------------------------------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"})


def restricted_volumes(pod: Pod) -> list[str]:
    """Volume types: only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected,
    secret."""
    return [v["name"] for v in _spec(pod).get("volumes") or [] if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES]


def allow_privilege_escalation(pod: Pod) -> list[str]:
    """Privilege escalation: every container sets ``allowPrivilegeEscalation: false`` (not on Windows pods)."""
    if _windows(pod):
        return []
    return [c["name"] for c in _containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]


def run_as_non_root(pod: Pod) -> list[str]:
    """Running as non-root: ``runAsNonRoot: true`` on the pod (containers may leave it unset) or on every
    container; ``false`` anywhere is forbidden."""
    pod_level = _sc(_spec(pod)).get("runAsNonRoot")
    bad = ["pod"] if pod_level is False else []
    for c in _containers(pod):
        value = _sc(c).get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            bad.append(c["name"])
    return bad


def run_as_user(pod: Pod) -> list[str]:
    """Running as non-root user: ``runAsUser`` must not be 0 (pod or container)."""
    return [who for who, sc in [("pod", _sc(_spec(pod)))] + [(c["name"], _sc(c)) for c in _containers(pod)]
            if sc.get("runAsUser") == 0]


def seccomp_profile_restricted(pod: Pod) -> list[str]:
    """Seccomp: ``RuntimeDefault`` or ``Localhost`` set explicitly, on the pod (containers may leave it unset) or
    on every container (not on Windows pods)."""
    if _windows(pod):
        return []
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_sc(_spec(pod)).get("seccompProfile") or {}).get("type")
    bad = ["pod"] if pod_type is not None and pod_type not in allowed else []
    for c in _containers(pod):
        kind = (_sc(c).get("seccompProfile") or {}).get("type")
        if (kind is None and pod_type not in allowed) or (kind is not None and kind not in allowed):
            bad.append(c["name"])
    return bad


def capabilities_restricted(pod: Pod) -> list[str]:
    """Capabilities: every container drops ``ALL`` and adds nothing but ``NET_BIND_SERVICE`` (not on Windows)."""
    if _windows(pod):
        return []
    bad = []
    for c in _containers(pod):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(c["name"])
    return bad


#: check ID → (level, function): the controls of each profile, in the standard's order.
CHECKS: dict[str, tuple[str, Callable[[Pod], list[str]]]] = {
    "windowsHostProcess": ("baseline", host_process),
    "hostNamespaces": ("baseline", host_namespaces),
    "privileged": ("baseline", privileged),
    "capabilities_baseline": ("baseline", capabilities_baseline),
    "hostPathVolumes": ("baseline", host_path_volumes),
    "hostPorts": ("baseline", host_ports),
    "appArmorProfile": ("baseline", app_armor_profile),
    "seLinuxOptions": ("baseline", se_linux_options),
    "procMount": ("baseline", proc_mount),
    "seccompProfile_baseline": ("baseline", seccomp_profile_baseline),
    "sysctls": ("baseline", sysctls),
    "hostProbesAndHostLifecycle": ("baseline", host_probes_and_host_lifecycle),
    "restrictedVolumes": ("restricted", restricted_volumes),
    "allowPrivilegeEscalation": ("restricted", allow_privilege_escalation),
    "runAsNonRoot": ("restricted", run_as_non_root),
    "runAsUser": ("restricted", run_as_user),
    "seccompProfile_restricted": ("restricted", seccomp_profile_restricted),
    "capabilities_restricted": ("restricted", capabilities_restricted),
}
# Restricted's stricter form of a Baseline control replaces it there (as the admission controller reports it).
_OVERRIDDEN_AT_RESTRICTED = {"hostPathVolumes": "restrictedVolumes"}


def violations(pod: Pod, level: str) -> list[Violation]:
    """What ``pod`` (``{"metadata", "spec"}``) violates at ``level`` (``privileged``: nothing)."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r} (one of {', '.join(LEVELS)})")
    rank = LEVELS.index(level)
    out = []
    for check, (check_level, fn) in CHECKS.items():
        if LEVELS.index(check_level) > rank:
            continue
        if level == "restricted" and check in _OVERRIDDEN_AT_RESTRICTED:
            continue
        found = fn(pod)
        if found:
            out.append(Violation(check, check_level, ", ".join(found)))
    return out


_WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "ReplicationController", "Job")


def pod_template(resource: dict[str, Any]) -> Pod | None:
    """The pod a resource creates (Pod, the workload kinds, CronJob); None for a resource without pods."""
    kind = resource.get("kind")
    if kind == "Pod":
        return {"metadata": resource.get("metadata") or {}, "spec": resource.get("spec") or {}}
    if kind in _WORKLOADS:
        template = resource["spec"]["template"]
    elif kind == "CronJob":
        template = resource["spec"]["jobTemplate"]["spec"]["template"]
    else:
        return None
    return {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}


def namespace_levels(namespace: dict[str, Any]) -> dict[str, str]:
    """``{"enforce": level, "audit": level, "warn": level}`` from a Namespace's labels (unset: ``privileged``, the
    admission controller's default without a cluster-wide configuration)."""
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    out = {}
    for mode in MODES:
        level = labels.get(f"pod-security.kubernetes.io/{mode}", "privileged")
        if level not in LEVELS:
            raise ValueError(f"namespace label pod-security.kubernetes.io/{mode}: unknown level {level!r}")
        out[mode] = level
    return out
