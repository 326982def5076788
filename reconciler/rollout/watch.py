"""The stateless promoter: decide from a :class:`RolloutStatus` alone, act by writing the same commits.

:func:`next_action` is pure. :func:`watch` repeats "read Git, decide, write one commit" every ``interval``; all
it knows comes from Git, so any number of promoters (or none) may run — the push is a compare-and-swap, so
two of them never both advance a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from reconciler.core.errors import UserError
from reconciler.rollout import edit
from reconciler.rollout.basetrust import BaseNotVerified
from reconciler.rollout.evaluate import COMPLETE, FAILED, READY, RolloutStatus
from reconciler.rollout.gitrepo import RolloutRepo


def next_action(status: RolloutStatus) -> str | None:
    """``promote`` when the gates pass, ``abort`` when the step failed (and there is a ``from``), else None."""
    if status.phase == READY:
        return "promote"
    if status.phase == FAILED and status.from_version is not None:
        return "abort"
    return None


def gates_summary(status: RolloutStatus) -> str:
    """The commit message body: the gates as evaluated, so history shows why a step moved."""
    lines = [f"Gates at {(status.head or '?')[:12]}, step {status.step} ({status.current.name}), "
             f"phase {status.phase}:"]
    for g in status.gates:
        value = "-" if g.value is None else f"{g.value:.4g}"
        lines.append(f"  {g.name}: {value} (threshold {g.threshold:g}) {'pass' if g.passed else 'FAIL'}"
                     if g.threshold is not None else f"  {g.name}: {value} {'pass' if g.passed else 'FAIL'}")
    c = status.current
    lines.append(f"  devices: {c.targeted} targeted, {c.healthy} healthy, {c.failed} failed, {c.pending} pending, "
                 f"{c.unknown} unknown")
    return "\n".join(lines)


@dataclass
class Tick:
    iteration: int
    phase: str
    step: int
    action: str | None
    commit: str | None
    message: str


def act(repo: RolloutRepo, deployment: str, action: str, status: RolloutStatus, snap: object, *, mode: str = "commit",
        branch_name: str | None = None, extra: str = "") -> str:
    body = gates_summary(status) + (f"\n\n{extra}" if extra else "")
    if action == "promote":
        fn = lambda text: edit.promote(text, deployment)  # noqa: E731
    elif action == "abort":
        fn = lambda text: edit.abort(text, deployment)  # noqa: E731
    else:
        raise ValueError(action)
    return repo.write(snap, deployment, fn, mode=mode, message_body=body, branch_name=branch_name)  # type: ignore[arg-type]


def watch(repo: RolloutRepo, deployment: str, *, interval: float, max_iterations: int | None,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Tick]:
    """Yield one :class:`Tick` per iteration; stops when the rollout is complete or aborted, or after the bound."""
    i = 0
    while max_iterations is None or i < max_iterations:
        i += 1
        snap, status = repo.status(deployment)
        action = next_action(status)
        if status.phase == COMPLETE:
            yield Tick(i, status.phase, status.step, None, None, status.message)
            return
        commit = None
        message = status.message
        if status.phase == FAILED and action is None:
            # Removing a deployment takes it from healthy devices too: an operator decides that, not a promoter.
            message += (f"; a first rollout (no rollout.from) is not aborted by watch: `modelfleet rollout abort "
                        f"{deployment}` removes the deployment")
        if action is not None:
            try:
                commit = act(repo, deployment, action, status, snap, extra="Written by `modelfleet rollout watch`.")
            except BaseNotVerified:
                raise  # the branch holds a commit the devices refuse: stop and say why, never retry on top of it
            except UserError as exc:  # somebody else moved the branch: re-read next time
                action, message = None, str(exc)
        yield Tick(i, status.phase, status.step, action, commit, message)
        if action == "abort":
            return
        if max_iterations is not None and i >= max_iterations:
            return
        sleep(interval)
