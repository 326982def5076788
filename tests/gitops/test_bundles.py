"""BundleWatcher (watchdog) feeding GitSource.import_bundle: an air-gapped update end to end."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from reconciler.gitops.bundles import BundleWatcher
from reconciler.gitops.source import GitSource
from tests._git_fixtures import Upstream, git, make_ssh_key, write_allowed_signers


def test_watcher_hands_over_complete_bundles_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.bundle").write_bytes(b"present before start")
    seen: list[tuple[str, bytes]] = []
    got = threading.Event()

    def on_bundle(p: Path) -> None:
        seen.append((p.name, p.read_bytes()))
        got.set()

    w = BundleWatcher(inbox, on_bundle, settle=1.0)  # pieces come every 0.05 s; a loaded runner stretches that
    w.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == [("old.bundle", b"present before start")]
        # Written slowly, in pieces: must be handed over once, complete.
        with open(inbox / "new.bundle", "wb") as fh:
            for _ in range(5):
                fh.write(b"x" * 1000)
                fh.flush()
                time.sleep(0.05)
        (inbox / "ignored.txt").write_text("not a bundle")
        tmp = inbox / ".incoming.bundle"
        tmp.write_bytes(b"renamed into place")
        os.rename(tmp, inbox / "moved.bundle")
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        assert sorted(seen) == sorted([("old.bundle", b"present before start"), ("new.bundle", b"x" * 5000),
                                       ("moved.bundle", b"renamed into place")])
    finally:
        w.stop()


def test_bundle_dropped_into_watched_dir_is_applied(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    alice = make_ssh_key(tmp_path / "keys", "alice@example.com")
    allowed = write_allowed_signers(tmp_path / "allowed", alice)
    base = up.commit({"fleet.yaml": "a: 1\n"}, ssh_key=alice)
    src = GitSource(up.file_url, tmp_path / "cache", verify_mode="head", allowed_signers=allowed)
    applied = [src.poll(None).commit]
    new = up.commit({"fleet.yaml": "a: 2\n"}, ssh_key=alice, push=False)  # the device cannot reach the server
    done = threading.Event()

    def on_bundle(p: Path) -> None:
        res = src.import_bundle(p, applied[-1])
        if res.changed:
            applied.append(res.commit)
        done.set()

    w = BundleWatcher(tmp_path / "inbox", on_bundle, settle=0.1)
    w.start()
    try:
        git(up.work, "bundle", "create", "--quiet", str(tmp_path / "u.bundle"), f"{base}..main")
        os.rename(tmp_path / "u.bundle", tmp_path / "inbox" / "u.bundle")
        assert done.wait(10)
        assert applied == [base, new]
        assert src.read_files(new) == {"fleet.yaml": b"a: 2\n"}
    finally:
        w.stop()
