"""Backends on real models: onnxruntime, the fp64 reference evaluator, activation recording."""

import numpy as np
import pytest

from bisector.backends.onnxrt import OnnxRuntime, import_ort
from bisector.backends.record import intermediate_tensors, record_activations
from bisector.backends.reference import ReferenceBackend
from bisector.errors import UserError
from bisector.model import io as mio
from fixtures.models import make_chain, make_control_flow, make_convnet


def _samples(n=3, shape=(1, 16)):
    rng = np.random.default_rng(0)
    return [{"x": rng.random(shape, dtype=np.float32)} for _ in range(n)]


def test_onnxruntime_runs_every_sample_and_names_missing_inputs(tmp_path):
    path = mio.save(make_chain(), tmp_path / "m.onnx")
    out = OnnxRuntime("cpu").run(path, _samples())
    assert len(out) == 3 and all(np.isfinite(o["y"]).all() for o in out)
    with pytest.raises(UserError, match="no data for input"):
        OnnxRuntime("cpu").run(path, [{"nope": np.zeros((1, 16), np.float32)}])
    with pytest.raises(UserError, match="unknown provider"):
        OnnxRuntime("metal")
    with pytest.raises(UserError, match="no CUDAExecutionProvider|CUDA"):
        OnnxRuntime("cuda").session(path)
    assert import_ort().__name__ == "onnxruntime"


def test_fp64_reference_agrees_with_fp32_to_fp32_precision(tmp_path):
    model = make_chain()
    samples = _samples(2)
    path = mio.save(model, tmp_path / "m.onnx")
    ref = ReferenceBackend(float64=True).run(model, samples)
    ort = OnnxRuntime("cpu").run(path, samples)
    for r, o in zip(ref, ort):
        assert r["y"].dtype == np.float32
        np.testing.assert_allclose(r["y"], o["y"], rtol=1e-4, atol=1e-5)


def test_recording_in_chunks_gives_every_tensor_of_every_sample(tmp_path):
    model = make_convnet()
    samples = _samples(2, (1, 3, 16, 16))
    # A budget far below one activation forces one onnxruntime run per tensor.
    store = record_activations(model, None, samples, tmp_path / "act", budget_bytes=1)
    names = intermediate_tensors(model)
    assert all(n in store for n in names) and "x" in store
    assert store.samples == 2
    full = OnnxRuntime("cpu").run(mio.save(model, tmp_path / "m.onnx"), samples)
    for s in range(2):
        np.testing.assert_array_equal(store.get("logits", s), full[s]["logits"])
    assert not np.array_equal(store.get("conv1_out", 0), store.get("conv1_out", 1))
    again = record_activations(model, None, samples, tmp_path / "act")  # reused, not recomputed
    assert again.files == store.files


def test_recording_a_model_with_if_and_loop(tmp_path):
    model = make_control_flow()
    specs = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    samples = [{k: np.random.default_rng(1).random(v, dtype=np.float32) for k, v in specs.items()}]
    store = record_activations(model, None, samples, tmp_path / "act")
    assert "if1_out" in store and "loop1_out" in store

