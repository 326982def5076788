"""Benchmark of TUF target downloads on loopback; prints one JSON line.

Figures (same run, same 200 MB file, same static server on 127.0.0.1):
- ``throughput_ratio``: plain HTTP GET time / TufClient fetch time (goal >= 0.7). The plain GET streams to a
  file and fsyncs it; the client also hashes, verifies against TUF metadata and renames into the store.
- ``second_sync_ms`` (median of 5) and ``second_sync_target_requests``: refresh + fetch with nothing new
  (goal < 50 ms, no target request, 0 target bytes).
- ``peak_extra_disk_ratio``: largest on-disk size of the device's store + staging during the download, over the
  model size (goal <= 1.1: no second copy).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.distribution import tufrepo  # noqa: E402
from reconciler.distribution.httpserve import StaticServer  # noqa: E402
from reconciler.distribution.store import ModelStore  # noqa: E402
from reconciler.distribution.tufclient import TufClient  # noqa: E402

SIZE = 200 * 1024 * 1024


def _dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _plain_get(url: str, dst: Path) -> float:
    http = urllib3.PoolManager()
    t0 = time.perf_counter()
    resp = http.request("GET", url, preload_content=False)
    with open(dst, "wb") as fh:
        for chunk in resp.stream(1 << 20):
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    resp.release_conn()
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tuf-") as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "big.onnx"
        with open(src, "wb") as fh:
            for _ in range(SIZE // (8 << 20)):
                fh.write(os.urandom(8 << 20))
        repo, keys = tmp / "repo", tmp / "keys"
        tufrepo.init_repo(repo, keys)
        (row,) = tufrepo.add_targets(repo, [keys], [src], "bench/big/1.0")
        src.unlink()
        root = repo / "metadata" / "1.root.json"
        with StaticServer(repo) as srv:
            url = f"{srv.url}/targets/" + tufrepo.target_url_path(row.path, row.sha256)
            plain_times, client_times, peak = [], [], 0
            for i in range(4):  # interleaved, so both see the same page-cache/writeback state
                os.sync()
                plain_times.append(_plain_get(url, tmp / "plain.bin"))
                os.sync()
                dev = tmp / f"device{i}"
                client = TufClient(dev / "tuf", f"{srv.url}/metadata", f"{srv.url}/targets", root,
                                   ModelStore(dev / "store"))
                stop = threading.Event()
                peaks = [0]

                def sample(d: Path = dev / "store", p: list[int] = peaks, s: threading.Event = stop) -> None:
                    while not s.is_set():
                        p[0] = max(p[0], _dir_bytes(d))
                        time.sleep(0.02)

                # The last run samples disk use; it is not timed (the sampler competes for the CPU).
                sampler = threading.Thread(target=sample) if i == 3 else None
                if sampler is not None:
                    sampler.start()
                t0 = time.perf_counter()
                client.refresh()
                client.fetch([row.path])
                if sampler is None:
                    client_times.append(time.perf_counter() - t0)
                else:
                    stop.set()
                    sampler.join()
                    peak = max(peaks[0], _dir_bytes(dev / "store"))
                if i < 3:
                    shutil.rmtree(dev)
            plain, t_client = min(plain_times), min(client_times)
            os.sync()

            srv.reset_stats()
            second = []
            for _ in range(5):
                t0 = time.perf_counter()
                again = TufClient(dev / "tuf", f"{srv.url}/metadata", f"{srv.url}/targets", root,
                                  ModelStore(dev / "store"))
                again.refresh()
                res = again.fetch([row.path])
                second.append((time.perf_counter() - t0) * 1000)
                assert not res[row.path].downloaded and again.bytes_downloaded == 0
            second_ms = sorted(second)[len(second) // 2]
            target_bytes = sum(1 for p, _ in srv.requests if p.startswith("/targets/"))

        print(json.dumps({
            "size_mb": SIZE // (1 << 20),
            "plain_get_mb_s": round(SIZE / plain / 1e6, 1),
            "tuf_client_mb_s": round(SIZE / t_client / 1e6, 1),
            "throughput_ratio": round(plain / t_client, 3),
            "second_sync_ms": round(second_ms, 1),
            "second_sync_target_requests": target_bytes,
            "peak_extra_disk_ratio": round(peak / SIZE, 3),
        }))


if __name__ == "__main__":
    main()
