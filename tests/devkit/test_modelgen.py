"""The benchmark's camera models: what they hold and compute, and that they serve and batch like real ones."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from reconciler.devkit.modelgen import camera_cnn, matmul_model, mobilenet_v2, model_cost


def test_mobilenet_v2_has_the_size_and_work_of_the_published_model() -> None:
    """Sandler et al. 2018, width 1.0 at 224×224: 3.4 M parameters, 300 M multiply-adds (plus the folded batch
    norms' biases here)."""
    blob = mobilenet_v2(seed=1)
    cost = model_cost(blob)
    assert 3.4e6 <= cost["params"] <= 3.6e6, cost
    assert 295e6 <= cost["macs"] <= 305e6, cost
    assert blob == mobilenet_v2(seed=1)  # deterministic: the same bytes on every machine
    half = model_cost(mobilenet_v2(width=0.5))
    assert 90e6 <= half["macs"] <= 100e6 and 1.9e6 <= half["params"] <= 2.0e6, half  # the paper's 0.5: 97 M, 2.0 M


def test_the_light_camera_cnn_does_a_fifth_of_the_work() -> None:
    cost = model_cost(camera_cnn(seed=1))
    assert cost == {"params": 649_608, "macs": 63_477_760}


def test_model_cost_counts_gemm_and_matmul() -> None:
    assert model_cost(matmul_model(16, 4)) == {"params": 16 * 4 + 4, "macs": 16 * 4}


def test_mobilenet_v2_runs_finite_and_batches_row_for_row() -> None:
    sess = ort.InferenceSession(mobilenet_v2(seed=1, size=96), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 96, 96)).astype(np.float32)
    (batch,) = sess.run(None, {"image": x})
    assert batch.shape == (3, 1000) and np.isfinite(batch).all() and batch.std() > 0
    alone = np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-5)


def test_image_mean_is_the_per_channel_mean() -> None:
    from reconciler.devkit.modelgen import image_mean

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (got,) = ort.InferenceSession(image_mean(size=8), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    np.testing.assert_allclose(got, x.mean(axis=(2, 3)), rtol=1e-5)
