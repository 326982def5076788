"""On-device data capture for retraining, under a privacy policy reviewed in Git and enforced on the device.

Workflow:

1. **Policy in Git.** A Deployment's ``capture`` section (off by default) names the purpose, the campaign and
   its recipient public key, the sample rate and triggers, what to keep and redact, the quota, the retention and
   the destination. :func:`~.policy.parse_policy` turns it into a :class:`~.policy.CapturePolicy`; every
   decision on it (sample or trigger, minimisation, what to purge, when to upload) is a pure function in
   :mod:`~.policy`.
2. **Request path.** The serving registry calls the version's :class:`~.service.CaptureObserver` after each
   inference; it decides and enqueues references on a bounded queue (full → dropped and counted). Nothing is
   written, encrypted or sent on the request path.
3. **Sealed batches.** The writer thread minimises records, appends them to the endpoint's open batch as they
   were queued and stacks them only when it seals (:mod:`~.openbatch`, the layout checked once per batch), then
   seals them (:mod:`~.batch`: libsodium sealed box to the campaign's public key, metadata bound by a header
   hash) into ``<state>/capture/batches`` (:mod:`~.spool`, temp + fsync + rename). The device cannot decrypt
   what it wrote.
4. **Retention.** The quota holds at every write (the endpoint's oldest batches make room first; a batch
   larger than the quota is dropped and counted); TTL and retired campaign keys are swept every few seconds;
   every capture, seal, upload and purge goes to the audit log (ids and counts, never content).
5. **Upload.** :mod:`~.upload` PUTs each batch under its id (idempotent), or copies it to a directory, only
   when the policy allows (idle, window) and paced to a bandwidth cap, one uploader thread and backoff per
   destination (:mod:`~.uploads`); a batch is deleted only after the destination showed the stored object is the batch (a digest
   in the answer, or a read-back hashed against it).
6. **Training side.** ``modelfleet data open --key`` (:func:`~.batch.open_batch`) verifies and decrypts batches
   into ``.npz`` (arrays keyed by input/output name) plus their metadata.

Erasure is crypto-erasure: each campaign has its own key pair; retiring the key in Git makes devices delete its
batches, and destroying the private key makes every copy anywhere unreadable. See docs/privacy.md.
"""
