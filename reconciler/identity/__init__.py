"""Device identity: every status commit is signed by the device that wrote it, and checked by every reader.

Workflow: a device is provisioned with its own Ed25519 key (:mod:`~.keys`: ``modelfleet agent keygen`` writes
it 0600 into the state directory and prints the public key) and an operator adds that public key to the
device's ``Device`` manifest (``spec.statusKeys``), reviewed like any inventory change. The device's
:class:`~reconciler.gitops.statuswriter.StatusWriter` signs each status commit in-process
(:func:`~.commitsig.sign_commit`: a git ``gpgsig`` header holding an SSH signature, so ``git verify-commit``
with an allowed-signers file accepts it too). On the operator's side :func:`~.trust.judge_status` — pure, no
I/O — decides for one status commit whether it counts: the device is in the inventory, the commit carries
exactly one SSH signature, and that signature verifies (:mod:`~.sshsig`, in-process, ~0.1 ms) against one of
the keys the inventory lists for that device at the desired-state revision. Everything else is ``untrusted``
with a reason, and untrusted statuses never count in a rollout gate.

It imports only :mod:`reconciler.core` and ``cryptography``.
"""
