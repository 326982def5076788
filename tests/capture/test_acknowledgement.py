"""A batch is deleted only once the destination showed the object stored under its name is the batch.

A HEAD answering with the batch's length is no such proof: a foreign or corrupted object of the same length
would be taken for the batch and the only copy deleted. Here real servers on 127.0.0.1 hold such objects, or
keep something else than what they were sent, and the device keeps its batch until the object is right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reconciler.capture.policy import parse_policy
from reconciler.capture.service import CaptureService
from reconciler.capture.upload import DirectoryDestination, HttpDestination, UploadError
from tests.capture._capture import Campaign, Recorder, WebDav


def _service(tmp_path: Path, **destination: object) -> tuple[CaptureService, dict[str, bytes]]:
    svc = CaptureService(tmp_path / "state", "dev-1", background=False)
    svc.configure({"mm": parse_policy(Campaign().section(batch={"records": 2}, destination=destination))})
    obs = svc.observer_for("mm", "1")
    for i in range(2):
        obs.observe({"input": np.full((1, 64), i, np.float32)}, {}, 0.0)
    svc.drain()
    local = {p.name: p.read_bytes() for p, _ in svc.spool.list()}
    assert len(local) == 1
    return svc, local


def _impostor(data: bytes) -> bytes:
    """Same length, other bytes."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_an_object_of_the_same_length_already_there_is_not_taken_for_the_batch(tmp_path: Path) -> None:
    with Recorder() as server:
        svc, local = _service(tmp_path, url=server.url)
        (name, data), = local.items()
        key = f"/capture/dev-1/{name}"
        server.stored[key] = _impostor(data)  # answers HEAD 200 with the batch's Content-Length
        svc.upload_once()
        assert server.stored[key] == data  # the batch was sent over it, then read back
        assert svc.spool.list() == []
        methods = [m for m, _, _ in server.requests]
        assert methods == ["MKCOL", "PUT", "GET"]  # no HEAD shortcut


def test_a_store_that_keeps_other_bytes_than_it_was_sent_acknowledges_nothing(tmp_path: Path) -> None:
    for name, store in (("flipped", _impostor), ("truncated", lambda b: b[:-10])):
        with Recorder(store=store) as server:
            svc, local = _service(tmp_path / name, url=server.url)
            svc.upload_once()
            assert {p.name: p.read_bytes() for p, _ in svc.spool.list()} == local, name  # kept
            assert "the object stored under this name is not the batch" in svc.status()["lastError"]
            (failed,) = [e for e in svc.spool.audit.read() if e["event"] == "upload-failed"]
            assert "not acknowledged" in failed["error"]


def test_a_digest_in_the_put_answer_spares_the_read_back(tmp_path: Path) -> None:
    with Recorder(etag=True) as server:  # ETag: the MD5 of what the store kept, as S3 answers a PUT
        svc, local = _service(tmp_path / "ok", url=server.url)
        svc.upload_once()
        assert svc.spool.list() == [] and list(server.stored.values()) == list(local.values())
        assert [m for m, _, _ in server.requests] == ["MKCOL", "PUT"]
    with Recorder(etag=True, store=_impostor) as server:  # its digest is of other bytes: read back, refused
        svc, local = _service(tmp_path / "bad", url=server.url)
        svc.upload_once()
        assert [m for m, _, _ in server.requests] == ["MKCOL", "PUT", "GET"]
        assert {p.name: p.read_bytes() for p, _ in svc.spool.list()} == local


def test_nginx_webdav_an_impostor_object_is_replaced_by_the_batch(tmp_path: Path) -> None:
    with WebDav(tmp_path / "nginx") as dav:
        svc, local = _service(tmp_path, url=dav.url)
        (name, data), = local.items()
        planted = dav.data / "capture" / "dev-1" / name
        planted.parent.mkdir(parents=True)
        planted.write_bytes(_impostor(data))
        svc.upload_once()
        assert dav.stored("dev-1") == local and svc.spool.list() == []


def test_a_file_of_the_same_size_on_the_media_is_not_taken_for_the_batch(tmp_path: Path) -> None:
    media = tmp_path / "media"
    svc, local = _service(tmp_path, directory=str(media))
    (name, data), = local.items()
    (media / "dev-1").mkdir(parents=True)
    (media / "dev-1" / name).write_bytes(_impostor(data))
    svc.upload_once()
    assert (media / "dev-1" / name).read_bytes() == data and svc.spool.list() == []
    # and a byte-identical copy already there is an acknowledgement without a second copy
    again = tmp_path / "again" / name
    again.parent.mkdir()
    again.write_bytes(data)
    assert DirectoryDestination(media, "dev-1").put(again)


def test_a_read_back_longer_than_the_batch_stops_at_one_byte_more(tmp_path: Path) -> None:
    with Recorder(store=lambda b: b + b"x" * (8 << 20)) as server:  # 8 MiB of trailing junk
        svc, local = _service(tmp_path, url=server.url)
        (name, _), = local.items()
        dest = HttpDestination(server.url, "dev-1")
        with pytest.raises(UploadError, match="more than .* bytes read back"):
            dest.put(svc.spool.path_of(name.removesuffix(".mfcap")))
