"""Models in and out of TUF: publishing, verified download, and the device's content-addressed store.

Workflow: on the publisher's side :mod:`~.tufrepo` signs model files as TUF targets (root, targets, delegations,
snapshot, timestamp; key rotation), optionally encrypting them first (:mod:`~.modelcrypto`, AES-256-GCM). On
the device :class:`~.tufclient.TufClient` refreshes the metadata from a trust anchor kept on the device,
downloads each target with Range resume into a staging file, verifies its length and hashes, and moves it into
the :class:`~.store.ModelStore` (read-only blobs named by sha256). :mod:`~.httpserve` is the small static
HTTP server with Range support used by tests and the demo.

It imports only :mod:`reconciler.core`.
"""
