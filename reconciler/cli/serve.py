"""``modelfleet serve MODEL_FILE…``: serve local model files over KServe v2 — no Git, no TUF.

Each file becomes one endpoint named after its stem (``--name`` for a single file). ``.onnx`` files run on
ONNX Runtime unless ``--runtime openvino``; ``.xml`` files are OpenVINO IR with the ``.bin`` beside them. Each
model is loaded and health-checked like a deployed one; a failure is reported and nothing is served.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.core.errors import UserError
from reconciler.core.extras import missing_runtime, runtime_installed

if TYPE_CHECKING:
    from reconciler.serving.limits import ServerLimits
    from reconciler.serving.registry import EndpointSpec


def _spec_for(
    path: Path, name: str, runtime: str | None, threads: int | None, device: str | None, precision: str = "fp32"
) -> EndpointSpec:
    from reconciler.serving.registry import EndpointSpec

    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".xml":
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise UserError(f"{path}: OpenVINO IR needs its weights file {weights.name} beside it")
        if runtime == "onnxruntime":
            raise UserError(f"{path}: OpenVINO IR cannot run on onnxruntime")
        files, rt = [path, weights], "openvino"
    elif suffix == ".onnx":
        files, rt = [path], runtime or "onnxruntime"
    else:
        raise UserError(f"{path}: unknown model format (expected .onnx or OpenVINO .xml)")
    if not runtime_installed(rt):
        raise UserError(f"{path}: {missing_runtime(rt)}")
    return EndpointSpec(
        name=name, version="1", runtime=rt, files=files, threads=threads, device=device, precision=precision
    )


def _limits(options: tuple[str, ...], max_body_mb: float | None) -> ServerLimits:
    from reconciler.serving.limits import ServerLimits

    pairs: dict[str, str] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise UserError(f"--limit {opt!r}: expected NAME=VALUE, e.g. headerTimeout=5s")
        pairs[key.strip()] = value.strip()
    if max_body_mb is not None:
        pairs["maxBodyBytes"] = str(int(max_body_mb * 1024 * 1024))
    try:
        return ServerLimits().with_options(pairs)
    except ValueError as exc:
        raise UserError(f"--limit: {exc}") from None


def _start_pool(
    workers: int, specs: list[EndpointSpec], host: str, port: int, unix_socket: Path | None, token: str | None,
    tls_cert: Path | None, tls_key: Path | None, limits: ServerLimits, grpc_port: int | None = None,
    pin_workers: bool | None = None,
) -> Any:
    from reconciler.serving.fronts import GrpcNotInstalled, grpc_missing
    from reconciler.serving.workers.pool import WorkerPool

    pool = WorkerPool(
        workers, host=host, port=port, unix_socket=unix_socket, auth_token=token,
        tls_cert=str(tls_cert) if tls_cert else None, tls_key=str(tls_key) if tls_key else None, limits=limits,
        grpc_port=grpc_port, pin_cpus=pin_workers,
    )
    try:
        pool.start()
    except GrpcNotInstalled:
        pool.stop()
        raise UserError(grpc_missing("--grpc-port")) from None
    except OSError as exc:
        pool.stop()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        pool.stop()
        raise UserError(f"cannot start the workers: {exc}") from None
    for spec in specs:
        result = pool.apply(spec)
        if not result.ok:
            pool.stop()
            raise UserError(f"{spec.files[0] if spec.files else spec.name}: {result.reason}: {result.message}")
    return pool


@click.command("serve")
@click.argument("model_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", help="Endpoint name (only with one model file; default: the file's stem).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), help="Runtime for .onnx files.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0: any)."
)
@click.option("--unix-socket", type=click.Path(path_type=Path), help="Also listen on this Unix socket.")
@click.option(
    "--grpc-port", type=click.IntRange(0, 65535),
    help="Also serve the Open Inference Protocol over gRPC on this port (0: any; needs modelfleet[grpc]).",
)
@click.option("--threads", type=click.IntRange(1, 256), help="Intra-op threads per model session.")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=1, show_default=True,
    help="Worker processes sharing the port (SO_REUSEPORT), each with its own copy of the models (docs/serving.md).",
)
@click.option(
    "--pin-workers/--no-pin-workers", default=None,
    help="Keep each worker process to one CPU (default: when there are as many workers as CPUs; docs/serving.md).",
)
@click.option("--device", help="OpenVINO device (CPU, GPU, NPU, AUTO).")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32", show_default=True,
    help="Numeric precision the model computes in (OpenVINO inference precision; see docs/serving.md).",
)
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Require 'Authorization: Bearer <token>' with the token in this file (or $MODELFLEET_AUTH_TOKEN).",
)
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), help="TLS private key (PEM).")
@click.option(
    "--max-body-mb", type=click.FloatRange(0.001), help="Request size limit in MiB (default 64; JSON: 16)."
)
@click.option(
    "--limit",
    "limit_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a server limit or timeout, e.g. maxConnections=200, headerTimeout=5s (names: docs/security.md).",
)
def serve(
    model_files: tuple[Path, ...],
    name: str | None,
    runtime: str | None,
    host: str,
    port: int,
    unix_socket: Path | None,
    grpc_port: int | None,
    threads: int | None,
    workers: int,
    pin_workers: bool | None,
    device: str | None,
    precision: str,
    auth_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_body_mb: float | None,
    limit_options: tuple[str, ...],
) -> None:
    """Serve local MODEL_FILE(s) over the Open Inference Protocol (KServe v2 REST, and gRPC with --grpc-port)."""
    from reconciler.serving.fronts import Fronts, GrpcNotInstalled
    from reconciler.serving.http.server import InferenceServer
    from reconciler.serving.registry import ModelRegistry

    limits = _limits(limit_options, max_body_mb)
    if name and len(model_files) > 1:
        raise UserError("--name works with one model file; with several, endpoints are named after the files")
    if (tls_cert is None) != (tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    token = os.environ.get("MODELFLEET_AUTH_TOKEN") or None
    if auth_token_file is not None:
        try:
            token = auth_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"cannot read {auth_token_file}: {exc.strerror}") from None
        if not token:
            raise UserError(f"{auth_token_file} is empty")
    specs = []
    for path in model_files:
        ep_name = name or path.stem
        if any(s.name == ep_name for s in specs):
            raise UserError(f"two model files would both be served as {ep_name!r}")
        specs.append(_spec_for(path, ep_name, runtime, threads, device, precision))
    if workers > 1:
        server: Any = _start_pool(workers, specs, host, port, unix_socket, token, tls_cert, tls_key, limits,
                                  grpc_port, pin_workers)
        registry: Any = server
    else:
        registry = ModelRegistry()
        for spec in specs:
            result = registry.apply(spec)
            if not result.ok:
                registry.close()
                raise UserError(f"{spec.files[0]}: {result.reason}: {result.message}")
        try:
            http = InferenceServer(
                registry,
                host=host,
                port=port,
                unix_socket=unix_socket,
                auth_token=token,
                tls_cert=tls_cert,
                tls_key=tls_key,
                limits=limits,
            )
            server = Fronts(http, grpc_port, tls_cert=tls_cert, tls_key=tls_key, requested_by="--grpc-port")
            server.start()
        except GrpcNotInstalled as exc:
            registry.close()
            raise UserError(str(exc)) from None
        except OSError as exc:
            registry.close()
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        except Exception as exc:  # bad TLS material and the like
            registry.close()
            raise UserError(f"cannot start the server: {exc}") from None
    stop = threading.Event()
    # This is the CLI process, not the embedded server: here handling SIGTERM is ours to do.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for spec in specs:
        click.echo(f"serving {spec.name} ({spec.runtime}) at {server.url}/v2/models/{spec.name}")
    if server.grpc_url is not None:
        click.echo(f"serving gRPC (inference.GRPCInferenceService) at {server.grpc_url}")
    if workers > 1:
        click.echo(f"{workers} workers (pids {', '.join(map(str, server.pids()))})")
    if unix_socket is not None:
        click.echo(f"also on unix socket {unix_socket}")
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        registry.close()
        click.echo("stopped", err=True)
