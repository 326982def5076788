"""The device daemon: serve the last good models, then reconcile the fleet's desired state, forever.

Workflow: :mod:`~.config` reads and validates the agent's own configuration (never taken from the fleet
repository); :class:`~.loop.Agent` boots offline from its :mod:`~.journal` (the last good version of every
endpoint), then runs reconcile passes — ``source`` → ``manifests`` → ``desired`` → ``artifacts`` → ``apply``
→ ``report`` — each step recording a condition instead of throwing. The real parts the loop talks to (Git
source, TUF client and store, registry and server, status writer) are wired in :mod:`~.wiring`, behind a few
small methods, so the loop can be driven by tests without a network. :mod:`~.shadowing` runs a rollout's
candidate beside the serving version on mirrored live requests (shadow evaluation, :mod:`reconciler.shadow`),
the candidate itself in a process of its own at idle CPU priority (:mod:`~.shadowproc`), fed through a
shared-memory ring the request path copies samples into (:mod:`~.shadowring`).
:mod:`~.sdnotify` speaks systemd's notify protocol (``READY=1``, watchdog).

The agent is the only part that imports all of :mod:`~reconciler.fleet`, :mod:`~reconciler.gitops`,
:mod:`~reconciler.distribution` and :mod:`~reconciler.serving`.
"""
