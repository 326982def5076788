"""The benchmarks' load generator: a raw-socket HTTP/1.1 keep-alive client on asyncio (uvloop) in a forked
process, so it never shares the server's GIL; and the request bodies and statistics the benchmarks share."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from typing import Any

import numpy as np


def _request(port: int, model: str, probe: dict[str, Any], binary: bool) -> bytes:
    if binary:
        t = probe["inputs"][0]
        raw = np.array(t["data"], np.float32).tobytes()  # the probes of bench models are FP32
        hdr = json.dumps(
            {
                "inputs": [
                    {
                        "name": t["name"],
                        "datatype": "FP32",
                        "shape": t["shape"],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        body, extra = hdr + raw, b"Inference-Header-Content-Length: %d\r\n" % len(hdr)
    else:
        body, extra = json.dumps({"inputs": probe["inputs"]}).encode(), b""
    return (
        b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n" % (model.encode(), port, extra, len(body))
    ) + body


async def _client(port: int, req: bytes, conc: int, duration: float, out: list) -> None:
    end = time.perf_counter() + duration

    async def one() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            i = head.lower().index(b"\r\ncontent-length:")  # a header of its own, not inference-header-…
            n = int(head[i + 17 : head.index(b"\r\n", i + 2)])
            await r.readexactly(n)
            out.append((t0, time.perf_counter() - t0, status))
        w.close()

    await asyncio.gather(*(one() for _ in range(conc)))


def _client_proc(port: int, req: bytes, conc: int, duration: float, conn: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: list = []
    asyncio.run(_client(port, req, conc, duration, out))
    conn.send(out)


def load(port: int, req: bytes, conc: int, duration: float) -> list[tuple[float, float, int]]:
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_client_proc, args=(port, req, conc, duration, b))
    p.start()
    out = a.recv()
    p.join()
    return out


def stats(samples: list[tuple[float, float, int]], duration: float) -> dict[str, float]:
    lat = sorted(s[1] for s in samples)
    return {
        "p50_us": round(lat[len(lat) // 2] * 1e6, 1),
        "p99_us": round(lat[int(len(lat) * 0.99)] * 1e6, 1),
        "rps": round(len(lat) / duration),
        "errors": sum(1 for s in samples if s[2] != 200),
    }


def binary_request(port: int, model: str, name: str, arr: np.ndarray) -> bytes:
    """An /infer request carrying ``arr`` as one binary input, asking for binary outputs."""
    raw = np.ascontiguousarray(arr).tobytes()
    hdr = json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(arr.shape),
                                  "parameters": {"binary_data_size": len(raw)}}],
                      "parameters": {"binary_data_output": True}}).encode()
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
            % (model.encode(), port, len(hdr), len(hdr) + len(raw))) + hdr + raw
