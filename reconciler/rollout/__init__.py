"""Progressive rollouts, gated by the devices' own status in Git.

A deployment in rollout names ``version``, ``rollout.from``, ``rollout.steps`` and the current ``rollout.step``;
each device computes its own membership (:mod:`reconciler.fleet.desired`). This package closes the loop on
the operator side, with no controller that can go down — everything it knows comes from Git:

1. :mod:`~reconciler.rollout.gitrepo` (the I/O edge) fetches the desired-state branch and every
   ``status/<device>`` branch once, reads the manifests at the head and the deployment file's history
   (when did the current step land?).
2. :func:`~reconciler.rollout.evaluate.evaluate` (pure, clock passed in) buckets the fleet's devices into
   steps, classifies each targeted device from its latest status (updated, healthy, failed, pending, or
   *unknown* when its heartbeat is older than a multiple of the heartbeat interval — unknown never blocks a
   step and never counts as healthy), checks the gates (minReporting, minHealthyPercent, maxFailedPercent,
   minSoak, maxDriftScore, and minShadowAgreement while a step runs the candidate in shadow beside ``from``,
   :mod:`reconciler.shadow`) and decides a phase: Progressing, Ready, Failed, Paused or Complete.
3. :mod:`~reconciler.rollout.edit` (pure) rewrites the deployment's YAML text for promote (a shadow step under
   ``switch: afterGate`` first gets ``shadowPassed``), abort, pause and resume, touching only the lines that
   change so a reviewer sees a one-line diff.
4. :mod:`~reconciler.rollout.render` prints the status as a table, stable JSON or Markdown for a PR comment;
   :mod:`~reconciler.rollout.watch` is the stateless promoter loop (``modelfleet rollout watch``).
"""
