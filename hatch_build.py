"""Build hook: compiles the optional C parts of modelfleet into the wheel (and, for ``pip install -e``, in place).

There is one today: ``reconciler/capture/sealer/_ringput.c``, the request path's copy of a captured record into
its ring (docs/privacy.md, Cost). It is compiled with ``$CC``, else the C compiler Python itself was built with
(sysconfig's ``CC``), against this interpreter's headers: nothing else is needed. When that fails — no compiler,
no headers (Debian: gcc and python3-dev), or ``MODELFLEET_NATIVE=0`` — the build says so (``pip -v`` shows it)
and goes on without it, removing a module an earlier build left: the package is then pure Python and capture
takes its Python path, which does the same, more slowly.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

EXTENSIONS = {"reconciler/capture/sealer/_ringput": "reconciler/capture/sealer/_ringput.c"}


def _compile(source: Path, target: Path) -> str | None:
    """Compile one extension module; None when done, else why not."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return f"no Python.h in {include} (Debian: apt-get install python3-dev)"
    tmp = target.with_name(target.name + ".tmp")
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-Wall", "-Werror=implicit-function-declaration", f"-I{include}",
           str(source), "-o", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cc[0]}: {exc}"
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"{cc[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}"
    os.replace(tmp, target)  # (an import never sees a half-written module)
    return None


def build_extensions(root: Path) -> tuple[list[str], list[str]]:
    """Compile every extension in place under ``root``: the built modules' paths (relative) and the problems."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    built, problems = [], []
    for module, source in EXTENSIONS.items():
        target = root / (module + suffix)
        if os.environ.get("MODELFLEET_NATIVE", "1") == "0":
            why: str | None = "MODELFLEET_NATIVE=0"
        else:
            why = _compile(root / source, target)
        if why is None:
            built.append(module + suffix)
        else:
            target.unlink(missing_ok=True)  # (an earlier build's: not this source's, not asked for)
            problems.append(f"modelfleet: {module} not built, its Python path serves instead: {why}")
    return built, problems


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        built, problems = build_extensions(Path(self.root))
        for problem in problems:
            print(problem, file=sys.stderr)
        if built:
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["artifacts"].extend(built)  # (git-ignored build products: included by name)
