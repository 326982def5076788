"""Captured records sealed in a process of their own: the request path's whole share is one copy into shared
memory.

Why: measured in one process (``bench/bench_capture_path.py``), the agent's writer thread doing the same work as
alone cost 2.3× as much in place, and the request path paid for it too: the capture thread and the serving
thread share the interpreter's objects, and every object both touch moves its cache line between the cores.
A process of its own shares nothing but the rows.

1. **Rows** (:mod:`~.rows`, pure): the records of one (endpoint, version) whose tensors share names, dtypes and
   shapes form a stream; its :class:`~.rows.RowLayout` gives each record a fixed-size row (time, trigger,
   each tensor's bytes), and :func:`~.rows.unpack` turns rows back into what the agent's own batches hold.
2. **Ring** (:mod:`~.ring`): each stream's rows live in a shared anonymous file; the request path copies a
   record into the next row and bumps the written count (a full ring drops the record, counted).
3. **The sealer** (:mod:`~.child`): takes every ring's new rows as one array every few seconds (sooner when a
   quarter of a ring fills), minimises them, seals batches (the same metadata, index and encryption as the
   agent's writer) and sends what one look sealed back in one message: each wake-up of another process or
   thread on a busy device costs the serving threads too, so there are few.
4. **The link** (:mod:`~.link`): the agent's end — starting the process, one ring per stream, the thread that
   takes the sealed batches to the capture service (which audits them and hands them to the uploader or the
   spool, within the quota, as its own), and the process's end: a crash closes every ring, the records go
   through the agent's own queue and writer until the service starts the process again.

A record that does not fit a row (object dtypes, not contiguous, over 256 KiB, a 9th stream) always goes the
agent's way; ``sealer: thread`` in the agent config sends everything that way (no second process: its memory
is in docs/privacy.md).
"""
