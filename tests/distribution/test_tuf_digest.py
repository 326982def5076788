"""The device TUF client refuses a signed sha256 that is not 64 hex digits before it names any file (issue S)."""

from __future__ import annotations

import pytest
from tuf.api.metadata import TargetFile

from reconciler.distribution.tufclient import BadMetadata, _sha256_of


@pytest.mark.parametrize("digest", ["../../../etc/passwd", "ab" * 31, "g" * 64, "A" * 64 + "/x"])
def test_a_signed_sha256_that_is_not_hex_is_bad_metadata(digest: str) -> None:
    info = TargetFile(10, {"sha256": digest}, "m/model.onnx")
    with pytest.raises(BadMetadata) as err:
        _sha256_of(info, "m/model.onnx")
    assert err.value.reason == "BadMetadata" and "m/model.onnx" in str(err.value)


def test_a_hex_sha256_is_used_lower_case() -> None:
    info = TargetFile(10, {"sha256": "AB" * 32}, "m/model.onnx")
    assert _sha256_of(info, "m/model.onnx") == "ab" * 32
