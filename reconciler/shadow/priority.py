"""The shadow worker's CPU priority: the candidate gets only the CPU the live requests leave idle.

The candidate runs on the mirror's worker thread itself — it is loaded with one intra-op thread, and then ONNX
Runtime runs the session in the calling thread and OpenVINO's CPU plugin (``INFERENCE_NUM_THREADS`` 1) does
too — so that thread's scheduling policy is the candidate's. :func:`lower_thread` asks Linux for
``SCHED_IDLE`` (the thread runs only on a core no other thread wants, and any other thread waking preempts it;
an unprivileged process may ask), else ``nice`` 19, else leaves it, and says which it got: the mirror reports it
(``priority`` in the status). Linux threads inherit the policy and nice of the thread that creates them, so a
runtime thread started from the worker stays low too. A process may lower any of its own threads (the mirror
lowers its worker as it starts it, so it never waits for an idle thread to run), but an unprivileged one cannot
raise it again: the worker is a thread of its own.
"""

from __future__ import annotations

import os

IDLE, NICE, NORMAL = "idle", "nice", "normal"
#: The nice value of the fallback: the lowest (CFS gives a nice-19 thread ~1.5 % of a core beside a nice-0 one).
FALLBACK_NICE = 19


def lower_thread(tid: int, want: str = IDLE) -> str:
    """Lower the thread ``tid`` of this process (a Linux TID) to ``want`` (:data:`IDLE`, else :data:`NICE`;
    :data:`NORMAL` leaves it) as far as the system allows; returns what the thread runs at now."""
    if want == IDLE:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return IDLE
        except (OSError, AttributeError):  # not Linux, or refused (a seccomp profile): try nice
            pass
    if want in (IDLE, NICE):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, FALLBACK_NICE)
            return NICE
        except (OSError, AttributeError):
            pass
    return NORMAL
