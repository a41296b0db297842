"""Weight files: a candidate's own data file (range copy), the session's copy of the user's files,
and the aligned session weight file. Real files, real onnx.load, real onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model import weights as wfiles
from bisector.model.prepare import own_weights, prepare

D = 160  # 160 x 160 fp32 = 100 KiB a tensor: past ALIGN_FROM_BYTES, so they start on 4096


def _model(n: int = 4, d: int = D, small: bool = True) -> onnx.ModelProto:
    """x -> MatMul w0 -> ... -> MatMul w{n-1} (-> Add b, a 64-byte tensor) with seeded weights."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((d, d)) / d).astype(np.float32), f"w{i}") for i in range(n)]
    nodes = [helper.make_node("MatMul", [f"h{i}" if i else "x", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}")
             for i in range(n)]
    out = f"h{n}"
    if small:
        inits.append(numpy_helper.from_array(np.arange(d, dtype=np.float32) / d, "b"))  # 640 bytes
        nodes.append(helper.make_node("Add", [out, "b"], ["y"], name="add"))
        out = "y"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _session(tmp_path):
    """A model whose weights are in a session-like directory (externalized there), and its arrays."""
    model = _model()
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    mio.externalize(model, tmp_path / "weights", threshold=0)
    return model, tmp_path / "weights", arrays


def _first(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """The first k MatMuls: a candidate that uses only w0..w{k-1}."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[k:]
    keep = {f"w{i}" for i in range(k)}
    kept = [t for t in m.graph.initializer if t.name in keep]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(f"h{k}", TensorProto.FLOAT, [1, D]))
    return m


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def test_own_data_file_holds_exactly_the_candidates_tensors_and_loads_in_onnx(tmp_path):
    model, weights, arrays = _session(tmp_path)
    cand = _first(model, 2)
    before = cand.SerializeToString()
    path = mio.save(cand, tmp_path / "it" / "polygraphy_debug.onnx", weights_from=weights, weights="file")
    assert cand.SerializeToString() == before  # the caller's model still references the session's file
    data = tmp_path / "it" / "polygraphy_debug.onnx.data"
    assert sorted(p.name for p in (tmp_path / "it").iterdir()) == ["polygraphy_debug.onnx", data.name]
    assert os.stat(data).st_nlink == 1 and not data.is_symlink()

    written = onnx.load(str(path), load_external_data=False)
    entries = [_entries(t) for t in written.graph.initializer]
    assert {e["location"] for e in entries} == {data.name}  # relative, beside the model, no ../
    assert [int(e["offset"]) for e in entries] == [0, 4096 * 25]  # 102,400 bytes rounded up to 4096
    size = D * D * 4
    assert data.stat().st_size == 4096 * 25 + size  # w0 and w1, nothing of w2, w3 or b
    raw = data.read_bytes()
    assert raw[:size] == arrays["w0"].tobytes() and raw[4096 * 25:] == arrays["w1"].tobytes()

    loaded = onnx.load(str(path))  # onnx's own loader, with its hard-link and containment checks
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), arrays[t.name])
    x = np.ones((1, D), np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ arrays["w0"] @ arrays["w1"], rtol=1e-4, atol=1e-7)


def test_tensors_that_share_bytes_share_them_in_the_data_file_too(tmp_path):
    model, weights, arrays = _session(tmp_path)
    cand = _first(model, 2)
    twin = cand.graph.initializer.add()
    twin.CopyFrom(cand.graph.initializer[1])
    twin.name = "w1_twin"
    cand.graph.node.append(helper.make_node("MatMul", ["h2", "w1_twin"], ["h3"], name="mm_twin"))
    cand.graph.output[0].name = "h3"
    path = mio.save(cand, tmp_path / "it" / "c.onnx", weights_from=weights, weights="file")
    inits = onnx.load(str(path), load_external_data=False).graph.initializer
    assert _entries(inits[1]) == _entries(inits[2])
    assert (tmp_path / "it" / "c.onnx.data").stat().st_size == 4096 * 25 + D * D * 4
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(str(path)).graph.initializer[2]), arrays["w1"])


def test_small_tensors_are_packed_on_64_bytes(tmp_path):
    model, weights, arrays = _session(tmp_path)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    path = mio.save(m, tmp_path / "it" / "all.onnx", weights_from=weights, weights="file")
    offsets = {t.name: int(_entries(t)["offset"]) for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    assert offsets["b"] == 4 * 4096 * 25  # after the four big ones, each on a block boundary
    assert all(v % wfiles.ALIGN == 0 for v in offsets.values())
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(str(path)).graph.initializer[-1]), arrays["b"])


def test_range_copy_without_copy_file_range_reads_and_writes(tmp_path, monkeypatch):
    model, weights, arrays = _session(tmp_path)
    monkeypatch.delattr(os, "copy_file_range")  # an old Python or another OS: the buffered path
    path = mio.save(_first(model, 3), tmp_path / "it" / "c.onnx", weights_from=weights, weights="file")
    for t in onnx.load(str(path)).graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), arrays[t.name])


def test_a_truncated_session_file_is_a_user_error(tmp_path):
    model, weights, _ = _session(tmp_path)
    with open(weights / "bisector.weights", "r+b") as f:
        f.truncate(4096 * 25 + 100)
    with pytest.raises(UserError, match="truncated"):
        mio.save(_first(model, 2), tmp_path / "it" / "c.onnx", weights_from=weights, weights="file")


def test_session_weight_file_is_aligned_and_never_takes_a_users_location(tmp_path):
    model = _model()
    user = _model(n=1)
    mio.externalize(user, tmp_path / "w", threshold=0)  # a model whose own file is called bisector.weights
    external = user.graph.initializer[0]
    model.graph.initializer.append(external)
    mio.externalize(model, tmp_path / "w", threshold=0)
    locations = mio.external_locations(model)
    assert locations == ["bisector.weights.1", "bisector.weights"]
    offsets = [int(_entries(t)["offset"]) for t in model.graph.initializer[:4]]
    assert offsets == [i * 4096 * 25 for i in range(4)]


def test_own_copy_copies_once_keeps_on_resume_and_replaces_an_old_hard_link(tmp_path):
    user, session = tmp_path / "user", tmp_path / "session" / "weights"
    user.mkdir()
    src = user / "m.onnx.data"
    src.write_bytes(os.urandom(300_000))
    assert wfiles.own_copy(src, session / "m.onnx.data") in ("copy", "reflink")
    dst = session / "m.onnx.data"
    assert dst.read_bytes() == src.read_bytes() and os.stat(src).st_nlink == 1 and os.stat(dst).st_nlink == 1
    assert wfiles.own_copy(src, dst) == "kept"  # a resume copies nothing
    dst.unlink()
    os.link(src, dst)  # what an older bisector left: a hard link to the user's file
    assert wfiles.own_copy(src, dst) in ("copy", "reflink")
    assert os.stat(src).st_nlink == 1 and dst.read_bytes() == src.read_bytes()
    os.utime(src, ns=(0, 10**9))  # the user's file changed: copied again
    assert wfiles.own_copy(src, dst) in ("copy", "reflink")
    assert not list(session.glob("*.partial"))
    assert wfiles.own_copy(src, src) == "same" and src.exists()


def test_prepare_copies_the_users_weights_and_links_nothing_to_them(tmp_path):
    (tmp_path / "user").mkdir()
    path = tmp_path / "user" / "m.onnx"
    onnx.save(_model(), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "user" / "m.onnx.data"
    prepared = prepare(path, weights_dir=tmp_path / "s" / "weights")
    assert prepared.weights_dir == tmp_path / "s" / "weights"
    assert os.stat(data).st_nlink == 1 and (tmp_path / "s" / "weights" / "m.onnx.data").read_bytes() == data.read_bytes()
    onnx.load(str(path))  # the user's model stays loadable while the session holds its weights
    # candidates for the in-process check may hard-link the session's own copy: never the user's file
    mio.save(prepared.model, tmp_path / "s" / "it" / "c.onnx", weights_from=prepared.weights_dir, weights="link")
    assert os.stat(data).st_nlink == 1 and os.stat(tmp_path / "s" / "it" / "m.onnx.data").st_nlink == 2
    assert own_weights(prepared.model, tmp_path / "user", tmp_path / "s" / "weights") == {"m.onnx.data": "kept"}


def test_a_location_outside_the_models_directory_is_refused(tmp_path):
    model = _model(n=1, small=False)
    t = model.graph.initializer[0]
    raw = t.raw_data
    (tmp_path / "w.bin").write_bytes(raw)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../w.bin")
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="outside the model's directory"):
        own_weights(model, tmp_path / "m", tmp_path / "s")


def test_the_compare_target_reads_the_users_weights_where_they_are_and_writes_nothing(tmp_path):
    from bisector.backends.target import Target

    (tmp_path / "user").mkdir()
    path = tmp_path / "user" / "m.onnx"
    onnx.save(_model(), str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    model = mio.load(path)
    x = np.ones((1, D), np.float32)
    work = tmp_path / "work"
    work.mkdir()
    for precision in (None, "fp16"):  # the model as it is, and a rewrite that keeps some weights external
        out = Target("cpu", precision=precision).run(model, path.parent, work, [{"x": x}])
        assert np.isfinite(out[0]["y"]).all()
    assert list(work.iterdir()) == []  # no target.onnx, no link to the user's weight file
    assert os.stat(tmp_path / "user" / "m.onnx.data").st_nlink == 1
