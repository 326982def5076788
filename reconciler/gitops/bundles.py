"""Air-gapped updates: watch a directory for ``*.bundle`` files (watchdog) and hand each complete one over.

A file copied onto a USB stick or dropped by ``scp`` fires events while it is still being written, so a bundle
is handed to ``on_bundle`` only once its size and mtime have stayed the same for ``settle`` seconds. Files
already present at :meth:`BundleWatcher.start` are handled too; each (path, size, mtime) is handled once.
What to do with the file afterwards (``GitSource.import_bundle``, moving it away) is the callback's business.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


def is_bundle_name(name: str) -> bool:
    return name.endswith(".bundle") and not name.startswith(".")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: BundleWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for p in (getattr(event, "dest_path", ""), event.src_path):
            if p:
                path = Path(p.decode() if isinstance(p, bytes) else p)
                if is_bundle_name(path.name) and path.parent == self.watcher.directory:
                    self.watcher._schedule(path)


class BundleWatcher:
    """Calls ``on_bundle(path)`` (from a worker thread) for every complete bundle file in ``directory``."""

    def __init__(self, directory: Path, on_bundle: Callable[[Path], None], *, settle: float = 0.5) -> None:
        self.directory = Path(directory).resolve()
        self.on_bundle = on_bundle
        self.settle = settle
        self._pending: dict[Path, tuple[int, int] | None] = {}
        self._done: dict[Path, tuple[int, int]] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._worker: threading.Thread | None = None

    def _schedule(self, path: Path) -> None:
        with self._cv:
            self._pending[path] = None
            self._cv.notify()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop = False
        self._worker = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._worker.start()
        observer = Observer()
        observer.schedule(_Handler(self), str(self.directory), recursive=False)
        observer.start()
        self._observer = observer
        for p in sorted(self.directory.iterdir()):
            if p.is_file() and is_bundle_name(p.name):
                self._schedule(p)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                if not self._pending:
                    self._cv.wait()
                    continue
                # Take a snapshot of every pending file; those unchanged since the last look are ready.
                ready: list[Path] = []
                for path, seen in list(self._pending.items()):
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        del self._pending[path]
                        continue
                    sig = (st.st_size, st.st_mtime_ns)
                    if seen == sig and self._done.get(path) != sig:
                        ready.append(path)
                        self._done[path] = sig
                        del self._pending[path]
                    elif seen == sig:
                        del self._pending[path]
                    else:
                        self._pending[path] = sig
                if not ready:
                    self._cv.wait(self.settle)
                    continue
            for path in ready:
                try:
                    self.on_bundle(path)
                except Exception:  # a bad callback must not kill the watcher
                    log.exception("handling bundle %s failed", path)
