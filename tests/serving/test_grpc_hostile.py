"""The gRPC front under hostile input: `modelfleet serve --grpc-port` in a subprocess, real sockets (issue AB).

Each case: the health endpoints (HTTP ``/v2/health/live`` and gRPC ``ServerLive``, each from a new connection)
answer within 1 s throughout, the server's RSS stays bounded, and afterwards
the gRPC front still serves. Raw HTTP/2 clients (:class:`tests._hostile.RawH2`) are the ones no gRPC library
would be: thousands of streams that never finish, a client that never reads.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np

from reconciler.serving.grpc import grpc_predict_v2_pb2 as pb
from tests._hostile import RawH2, ServerProcess, one_at_a_time, open_fds, sample_while, timed_get

INFER = b"/inference.GRPCInferenceService/ModelInfer"


def infer_request(rows: int) -> bytes:
    x = np.zeros((rows, 16), np.float32)
    return pb.ModelInferRequest(model_name="mm", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[rows, 16])], raw_input_contents=[x.tobytes()]).SerializeToString()


def grpc_live(port: int) -> float:
    """How long a new gRPC client (a connection of its own) waits for ServerLive."""
    t0 = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ServerLive",
                              response_deserializer=pb.ServerLiveResponse.FromString)
        assert call(pb.ServerLiveRequest().SerializeToString(), timeout=10).live
    return time.monotonic() - t0


def watch(srv: ServerProcess, seconds: float) -> tuple[list[float], list[float]]:
    """Health latencies (fresh connections: HTTP /v2/health/live, and gRPC ServerLive as negative numbers) and
    RSS samples."""
    latencies, rss = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, took = timed_get(srv.port)
        assert status == 200
        latencies += [took, -grpc_live(srv.grpc_port)]  # gRPC's negative: which is which in a failure
        rss.append(srv.rss_mb())
        time.sleep(0.05)
    return latencies, rss


def still_serves(srv: ServerProcess) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
        answer = pb.ModelInferResponse.FromString(ch.unary_unary(INFER.decode())(infer_request(2), timeout=10))
        assert answer.outputs[0].shape == [2, 4]


def test_oversized_messages_are_refused_before_they_are_kept(tmp_path: Path) -> None:
    """Four clients send 64 MiB messages to a server that takes 4 MiB: RESOURCE_EXHAUSTED, RSS bounded (by the
    streams' fixed receive windows)."""
    with one_at_a_time(), ServerProcess(tmp_path, "maxBodyBytes=4194304", grpc=True) as srv:
        timed_get(srv.port)
        base = srv.rss_mb()
        big = infer_request(1 << 20)
        codes: list[grpc.StatusCode] = []
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}", options=[("grpc.max_send_message_length", -1)]) as ch:
            call = ch.unary_unary(INFER.decode())

            def send() -> None:
                try:
                    call(big, timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

            threads = [threading.Thread(target=send) for _ in range(4)]
            for t in threads:
                t.start()
            latencies, rss = watch(srv, 3.0)
            for t in threads:
                t.join(30)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
        assert max(map(abs, latencies)) < 1.0, [round(x, 3) for x in latencies if abs(x) > 0.1]
        # Not one of the 64 MiB messages is held, nor much of each: the connection holds at most its fixed 4 MiB
        # window before the refusal (+5-13 MB in all, loaded host; grpc's BDP probing grew it: +5-89 MB).
        assert max(rss) - base < 32, (base, max(rss))
        still_serves(srv)


def test_thousands_of_streams_that_never_finish(tmp_path: Path) -> None:
    """20 connections open 500 streams each and send a part of each message, never the rest, never reading:
    each connection holds at most maxPipelined streams, and is dropped when it does not answer the keepalive."""
    with one_at_a_time(), ServerProcess(tmp_path, "bodyTimeout=2s", grpc=True) as srv:
        timed_get(srv.port)
        base, fds = srv.rss_mb(), open_fds(srv.proc.pid)
        msg = infer_request(4096)  # 256 KiB announced, 1000 bytes sent
        clients = []
        for _ in range(20):
            h = RawH2(srv.grpc_port)
            h.hello()
            clients.append(h)
            frames = b"".join(h.request(2 * i + 1, INFER, msg, end=False, cut=1000) for i in range(500))
            threading.Thread(target=h.send, args=(frames,), daemon=True).start()
        latencies, rss = watch(srv, 3.0)
        assert max(map(abs, latencies)) < 1.0, [round(x, 3) for x in latencies if abs(x) > 0.1]
        assert max(rss) - base < 64, (base, max(rss))
        still_serves(srv)  # a well-behaved client is served meanwhile
        dropped = sample_while(lambda: open_fds(srv.proc.pid), lambda: open_fds(srv.proc.pid) <= fds, 0.2, 30)
        assert open_fds(srv.proc.pid) <= fds, dropped[-5:]
        for h in clients:
            h.close()


def test_a_client_that_never_reads(tmp_path: Path) -> None:
    """10 connections announce a receive window of 0 (no answer can be sent to them) and send 200 complete
    requests each, then never read: the answers they hold are bounded by the streams a connection may open,
    and the connections are dropped when they do not answer the keepalive ping."""
    with one_at_a_time(), ServerProcess(tmp_path, "bodyTimeout=2s", grpc=True) as srv:
        timed_get(srv.port)
        base, fds = srv.rss_mb(), open_fds(srv.proc.pid)
        msg = infer_request(4096)  # 256 KiB in, 64 KiB out
        clients = []
        for _ in range(10):
            h = RawH2(srv.grpc_port)
            h.hello(initial_window=0)
            clients.append(h)
            frames = b"".join(h.request(2 * i + 1, INFER, msg) for i in range(200))
            threading.Thread(target=h.send, args=(frames,), daemon=True).start()
        latencies, rss = watch(srv, 3.0)
        assert max(map(abs, latencies)) < 1.0, [round(x, 3) for x in latencies if abs(x) > 0.1]
        assert max(rss) - base < 100, (base, max(rss))
        still_serves(srv)
        dropped = sample_while(lambda: open_fds(srv.proc.pid), lambda: open_fds(srv.proc.pid) <= fds, 0.2, 30)
        assert open_fds(srv.proc.pid) <= fds, dropped[-5:]
        for h in clients:
            h.close()


def test_stalled_streams_beyond_the_call_cap_do_not_shut_out_health(tmp_path: Path) -> None:
    """80 connections open maxPipelined (32) streams each and never finish one: 2,560 calls that never arrive,
    more than the connections cap (1024) the server once also used as its cap on concurrent calls. Health
    (ServerLive, ServerReady, REST) answers within 1 s throughout, RSS stays bounded, a well-behaved client is
    served; the hostile connections are then dropped."""
    with one_at_a_time(), ServerProcess(tmp_path, "bodyTimeout=20s", nofile=4096, grpc=True) as srv:
        timed_get(srv.port)
        base, fds = srv.rss_mb(), open_fds(srv.proc.pid)
        msg = infer_request(64)  # 4 KiB announced, 100 bytes sent
        clients = []
        for _ in range(80):
            h = RawH2(srv.grpc_port)
            h.hello()
            clients.append(h)
            h.send(b"".join(h.request(2 * i + 1, INFER, msg, end=False, cut=100) for i in range(32)))
        time.sleep(0.5)  # the server has taken the streams
        latencies, rss = watch(srv, 3.0)
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            ready = ch.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                   response_deserializer=pb.ServerReadyResponse.FromString)
            assert ready(pb.ServerReadyRequest().SerializeToString(), timeout=1).ready
        assert max(map(abs, latencies)) < 1.0, [round(x, 3) for x in latencies if abs(x) > 0.1]
        assert max(rss) - base < 64, (base, max(rss))
        still_serves(srv)
        for h in clients:
            h.close()
        dropped = sample_while(lambda: open_fds(srv.proc.pid), lambda: open_fds(srv.proc.pid) <= fds, 0.2, 30)
        assert open_fds(srv.proc.pid) <= fds, dropped[-5:]
