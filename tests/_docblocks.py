"""Executable documentation: the shell blocks of a Markdown page, run in a sandbox, so a page that drifts fails CI.

A fenced block (```sh, ```console, ```yaml …) is driven by an HTML comment on the line before its fence, which
Markdown renderers do not show:

    <!-- doc-test: run -->          run the block with ``sh -e`` (every command must succeed; ``cmd || true``
                                    documents an expected failure)
    <!-- doc-test: output -->       a ``console`` block: run each ``$ command`` and check the documented output
                                    lines against the real ones (see :func:`output_matches`)
    <!-- doc-test: file PATH -->    write the block's text to PATH (a config or manifest later blocks use)
    <!-- doc-test: skip REASON -->  do not run it, for a stated reason (a daemon that runs forever, a command
                                    for another machine); its ``modelfleet`` commands are still parsed

On a page registered for execution every ``sh``/``console``/``bash`` block needs one of these: an unmarked block
is an error, never silently skipped. Blocks of a page run in order in one sandbox directory, like a reader
following the page. A page's test setup may map documented paths and URLs to sandbox ones (``/etc/modelfleet``
→ ``<sandbox>/etc``, a Git URL → a loopback git daemon); the mapping is applied to every block's text.

:func:`modelfleet_lines` finds every ``modelfleet …`` command in any page's code (fenced or indented) so a test
can parse each against the real CLI (unknown command, unknown option or a missing required option fail).

A page a reader follows in one terminal (docs/quickstart.md: later blocks use the variables, the working
directory and the background servers of earlier ones) runs with :func:`run_session`: all its blocks as
one ``bash`` script under ``set -euo pipefail``, exactly as written, in a process group of its own that is
killed afterwards; each ``output`` command's stdout is kept and compared once the script is done.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(run|output|file|skip)\b\s*(.*?)\s*-->\s*$")
SHELL_LANGS = ("sh", "bash", "shell", "console")


@dataclass
class Block:
    page: Path
    line: int  # line of the opening fence (1-based)
    lang: str
    text: str
    action: str | None  # run | output | file | skip | None (unmarked)
    arg: str = ""

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO_ROOT) if self.page.is_relative_to(REPO_ROOT) else self.page
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` with the directive before each (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(```+|~~~+)\s*([\w-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        d = _DIRECTIVE.match(lines[prev].strip()) if prev >= 0 else None
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", d.group(1) if d else None,
                         d.group(2) if d else ""))
        i += 1
    return out


def _code_lines(page: Path) -> list[tuple[int, str]]:
    """Lines inside fenced blocks and 4-space indented blocks (continuations joined)."""
    out: list[tuple[int, str]] = []
    in_fence = False
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(r"^(```|~~~)", raw):
            in_fence, pending = not in_fence, None
            continue
        indented = raw.startswith("    ") and not re.match(r"^\s*([*-]|\d+\.)\s", raw)
        code = raw if in_fence else (raw[4:] if indented else None)
        if code is None:
            pending = None
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + code.strip())
        else:
            pending = (n, code.strip())
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1])
            continue
        out.append(pending)
        pending = None
    return out


def modelfleet_lines(page: Path) -> list[tuple[int, list[str]]]:
    """Every ``modelfleet …`` command in the page's code, as argv after ``modelfleet`` (comments dropped)."""
    out: list[tuple[int, list[str]]] = []
    for n, line in _code_lines(page):
        line = line.removeprefix("$ ")
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if any(w.startswith("[") for w in words):
                continue  # a usage synopsis (`[--opt VALUE]`), not a command
            cut = next((i for i, w in enumerate(words) if re.match(r"^(\d*[<>]|&$)", w)), len(words))
            words = words[:cut]  # redirections and a trailing `&` are the shell's, not the command's
            if words and words[0] == "modelfleet":
                out.append((n, _without_redirections(words[1:])))
    return out


def _without_redirections(words: list[str]) -> list[str]:
    """``cmd --opt x 2>&1 > out.txt`` → ``cmd --opt x``: shell redirections are not the command's arguments."""
    out: list[str] = []
    skip_next = False
    for w in words:
        if skip_next:
            skip_next = False
            continue
        m = re.match(r"^\d*(>>?|<)(&\d+)?(.*)$", w)
        if m:
            skip_next = not m.group(2) and not m.group(3)  # `> file`: the target is the next word
            continue
        out.append(w)
    return out


def output_matches(documented: list[str], real: list[str]) -> str | None:
    """None when every documented output line has a real line, in order, with the same leading word and the same
    number of columns (values such as commits, pids and times differ from run to run); else why not."""
    j = 0
    for doc in documented:
        want = doc.split()
        if not want:
            continue
        while j < len(real) and not (real[j].split()[:1] == want[:1] and len(real[j].split()) >= min(len(want), 2)):
            j += 1
        if j == len(real):
            return f"documented line {doc!r} has no counterpart in the real output:\n" + "\n".join(real)
        j += 1
    return None


class Sandbox:
    """Runs a page's blocks in ``root`` with ``modelfleet`` (this checkout) first on PATH."""

    def __init__(self, root: Path, replacements: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.replacements = dict(replacements or {})
        bindir = root / ".doc-bin"
        bindir.mkdir(parents=True, exist_ok=True)
        exe = bindir / "modelfleet"
        exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m reconciler.cli \"$@\"\n")
        exe.chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONPATH=str(REPO_ROOT), **(env or {}))

    def text(self, block: Block) -> str:
        text = block.text
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        return text

    def sh(self, script: str, block: Block, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-e", "-c", script], cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run(self, block: Block) -> None:
        """Run one block per its directive; raises AssertionError naming the page and line on a mismatch."""
        text = self.text(block)
        if block.action == "file":
            dest = Path(self.text(Block(block.page, 0, "", block.arg, None)).strip())
            dest = dest if dest.is_absolute() else self.root / dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        elif block.action == "run":
            r = self.sh(text, block)
            assert r.returncode == 0, f"{block.where}: block failed (exit {r.returncode}):\n{text}\n{r.stdout}{r.stderr}"
            assert "Traceback" not in r.stderr, f"{block.where}: traceback:\n{r.stderr}"
        elif block.action == "output":
            cmd: str | None = None
            documented: list[str] = []
            for line in [*text.splitlines(), "$ "]:
                if line.startswith("$ "):
                    if cmd:
                        r = self.sh(cmd, block)
                        assert r.returncode == 0, f"{block.where}: `{cmd}` failed:\n{r.stdout}{r.stderr}"
                        why = output_matches(documented, r.stdout.splitlines())
                        assert why is None, f"{block.where}: `{cmd}`: {why}"
                    cmd, documented = line[2:].strip(), []
                else:
                    documented.append(line)
        elif block.action == "skip":
            assert block.arg, f"{block.where}: `doc-test: skip` needs a reason"
        else:
            raise AssertionError(f"{block.where}: a {block.lang} block without a `<!-- doc-test: … -->` marker")


@dataclass
class Session:
    """What :func:`run_session` ran: each ``output`` command with its stdout, and the script's log."""

    outputs: list[tuple[Block, str, str]] = field(default_factory=list)  # (block, command, stdout)
    log: str = ""

    def outputs_of(self, prefix: str) -> list[tuple[str, str]]:
        """(command, stdout) of the commands starting with ``prefix``, in page order."""
        return [(cmd, out) for _, cmd, out in self.outputs if cmd.startswith(prefix)]


def _session_script(sandbox: Sandbox, page_blocks: list[Block],
                    out_dir: Path) -> tuple[str, list[tuple[Block, str, list[str]]]]:
    lines = ["set -euo pipefail", "trap 'echo \"doc-test: failed in $__doc_block (exit $?)\" >&2' ERR"]
    commands: list[tuple[Block, str, list[str]]] = []  # (block, command, documented output)
    for block in page_blocks:
        text = sandbox.text(block)
        lines.append(f"__doc_block={shlex.quote(block.where)}")
        if block.action == "run":
            lines.append(text)
        elif block.action == "file":
            dest = sandbox.text(Block(block.page, 0, "", block.arg, None)).strip()
            lines += [f"mkdir -p \"$(dirname {shlex.quote(dest)})\"",
                      f"cat > {shlex.quote(dest)} <<'__DOC_TEST_EOF__'\n{text}__DOC_TEST_EOF__"]
        elif block.action == "output":
            for line in text.splitlines():
                if line.startswith("$ "):
                    out = out_dir / f"{len(commands)}.out"
                    lines.append(f"{{ {line[2:].strip()}\n}} | tee {shlex.quote(str(out))}")
                    commands.append((block, line[2:].strip(), []))
                elif commands and commands[-1][0] is block:
                    commands[-1][2].append(line)
        elif block.action == "skip":
            assert block.arg, f"{block.where}: `doc-test: skip` needs a reason"
        else:
            raise AssertionError(f"{block.where}: a {block.lang} block without a `<!-- doc-test: … -->` marker")
    return "\n".join(lines) + "\n", commands


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_group(pgid: int, grace: float = 10.0) -> bool:
    """SIGTERM then SIGKILL what is left of the process group; True if anything was still running."""
    if not _group_alive(pgid):
        return False
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _log_tails(root: Path, lines: int = 8) -> str:
    """The last lines of every ``*.log`` the page's processes wrote (servers, agents): why a wait never ended."""
    out = []
    for log in sorted(root.rglob("*.log")):
        if log.name != ".doc-session.log":
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"\n--- {log.relative_to(root)}:\n" + "\n".join(tail))
    return "".join(out)


def run_session(sandbox: Sandbox, page_blocks: list[Block], deadline: float, settle: float = 20.0) -> Session:
    """Run ``page_blocks`` as one bash script (see the module docstring); raises AssertionError with the log
    when a command fails, the deadline passes, an ``output`` block differs from the real output, or processes
    the page started are still running after it ended (its own stop step must stop them)."""
    out_dir = sandbox.root / ".doc-out"
    out_dir.mkdir(exist_ok=True)
    script, commands = _session_script(sandbox, page_blocks, out_dir)
    (sandbox.root / ".doc-session.sh").write_text(script)
    log_path = sandbox.root / ".doc-session.log"
    rc: int | None = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "--noprofile", "--norc", str(sandbox.root / ".doc-session.sh")],
                                cwd=sandbox.root, env=sandbox.env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(deadline)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if rc is not None:  # the page's own stop step ran: give what it stopped time to exit
                settled_by = time.monotonic() + settle
                while _group_alive(proc.pid) and time.monotonic() < settled_by:
                    time.sleep(0.1)
            left_running = _end_group(proc.pid)
            proc.wait()
    session = Session(log=log_path.read_text(errors="replace"))
    page = page_blocks[0].page.name if page_blocks else "page"
    assert rc is not None, f"{page}: not done after {deadline:.0f} s:\n{session.log[-3000:]}{_log_tails(sandbox.root)}"
    assert rc == 0, f"{page}: the script failed (exit {rc}):\n{session.log[-3000:]}{_log_tails(sandbox.root)}"
    assert "Traceback" not in session.log, f"{page}: traceback:\n{session.log[-4000:]}"
    assert not left_running, f"{page}: processes the page started were still running after it ended"
    for n, (block, cmd, documented) in enumerate(commands):
        real = (out_dir / f"{n}.out").read_text()
        why = output_matches(documented, real.splitlines())
        assert why is None, f"{block.where}: `{cmd}`: {why}"
        session.outputs.append((block, cmd, real))
    return session
