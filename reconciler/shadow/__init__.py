"""Shadow evaluation: a new model version proves itself on a device's live traffic before it serves.

A deployment in rollout may say ``rollout.shadow``. The devices a step newly targets then do not switch at once:

1. **Beside, not instead.** The device keeps serving ``rollout.from`` and loads the candidate (``version``) next
   to it, after the candidate's own health check on its probe — or refuses with a reason when the device has no
   room for a second copy in a process of its own (:mod:`~reconciler.shadow.memory` estimates it from the
   model's size against the memory the agent may use).
2. **Mirrored, off the request path.** Every request's tensors already reach the version's observer
   (``Observer.observe``, after the live answer is computed). A sampled share of them (``sampleRate``) is handed
   on, bounded — a full hand-off drops the sample and counts it, it never waits — and the candidate runs on the
   same inputs at the lowest CPU priority (:mod:`~reconciler.shadow.priority`), so it gets only the CPU the
   live requests leave idle. In the agent the hand-off is a copy into a shared-memory ring and the candidate's
   own process runs, compares and keeps the aggregates (:mod:`reconciler.agent.shadowring`). The
   candidate's outputs are compared and thrown away: a shadow candidate never answers a client.
3. **Compared, as aggregates.** :mod:`~reconciler.shadow.compare` decides per row whether the candidate agrees
   (top-1 for score outputs ``[rows, classes]``, exact for labels, within ``atol``/``rtol`` otherwise) and
   measures the per-output absolute and relative error; :mod:`~reconciler.shadow.stats` keeps counts, error
   aggregates and the two latencies in fixed memory. Only aggregates leave the device (its status and
   Prometheus metrics): never an input.
4. **Judged.** :mod:`~reconciler.shadow.gate` turns the aggregates into the device's verdict (Comparing,
   Agreeing, Disagreeing, Failed — a candidate that raises or returns NaN/Inf where the live version does not
   fails at once and never serves) and, on the operator side, into the rollout gate ``minShadowAgreement``.
5. **Switched.** ``switch: afterGate`` — ``modelfleet rollout promote`` of a shadow step writes
   ``rollout.shadowPassed: <step>`` and the step's devices then serve the candidate; ``switch: onAgreement`` —
   a device switches itself once its agreement reaches ``minAgreement`` over ``minSamples`` (remembered in its
   journal, so a restart does not undo it).

Everything here is pure (no I/O, no clock, no runtime): :mod:`reconciler.fleet.desired` decides which devices
shadow, :mod:`reconciler.rollout.evaluate` reads their reports, and the agent's
:mod:`reconciler.agent.shadowing` loads the candidate and feeds it (:mod:`reconciler.agent.shadowring`).
"""
