"""The device TUF client refuses a signed hash that is not hex where it reads it, before it names any file."""

from __future__ import annotations

import pytest
from tuf.api.metadata import TargetFile

from reconciler.distribution.tufclient import BadMetadata, _declared_hashes, _staging_key


@pytest.mark.parametrize("digest", ["../../../etc/passwd", "g" * 64, "a" * 64 + "/x", "a" * 30 + "\0" + "a" * 33])
def test_a_signed_sha256_that_is_not_hex_is_bad_metadata(digest: str) -> None:
    info = TargetFile(10, {"sha256": digest}, "m/model.onnx")
    with pytest.raises(BadMetadata) as err:
        _staging_key(info, "m/model.onnx")
    assert err.value.reason == "BadMetadata" and "m/model.onnx" in str(err.value)


def test_a_hex_sha256_is_used_lower_case() -> None:
    info = TargetFile(10, {"sha256": "AB" * 32}, "m/model.onnx")
    assert _declared_hashes(info, "m/model.onnx") == {"sha256": "ab" * 32}
    assert _staging_key(info, "m/model.onnx") == "sha256-" + "ab" * 32
