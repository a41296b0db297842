"""The ONNX toolkit on real models: load/save errors, external data, IR, shapes, naming, order,
folding, cuts, fingerprints."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.extract import SubgraphCutter
from bisector.model.fingerprint import items_fingerprint, model_fingerprint
from bisector.model.graph import GraphIndex, fold_constants, name_nodes, toposort
from bisector.model.prepare import prepare
from bisector.model.shapes import freeze_inputs, infer_shapes, parse_shapes
from fixtures.models import make_chain, make_control_flow, make_dynamic, make_ir3, make_unnamed, save_with_external_data


def _run(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_load_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        mio.load(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model")
    with pytest.raises(UserError, match="not a readable ONNX model|not an ONNX model"):
        mio.load(tmp_path / "text.onnx")
    good = make_chain().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError):
        mio.load(tmp_path / "cut.onnx")


def test_missing_external_data_is_named(tmp_path):
    path = save_with_external_data(make_chain(), tmp_path / "m.onnx")
    data = [p for p in tmp_path.iterdir() if p.suffix == ".data"][0]
    data.unlink()
    with pytest.raises(UserError, match="external data file .* not found"):
        mio.load(path)


def test_external_weights_are_linked_not_copied(tmp_path):
    (tmp_path / "src").mkdir()
    path = save_with_external_data(make_chain(), tmp_path / "src" / "m.onnx")
    model = mio.load(path)
    assert mio.external_locations(model)
    size_on_disk = path.stat().st_size
    out = mio.save(model, tmp_path / "it" / "cand.onnx", weights_from=path.parent)
    assert out.stat().st_size == size_on_disk  # the model file holds no weights
    loc = mio.external_locations(model)[0]
    assert os.stat(tmp_path / "it" / loc).st_ino == os.stat(path.parent / loc).st_ino  # same file
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    assert np.allclose(_run(out, {"x": x})[0], _run(path, {"x": x})[0])
    embedded = mio.save(model, tmp_path / "emb" / "cand.onnx", weights_from=path.parent, weights="embed")
    onnx.checker.check_model(onnx.load(str(embedded)))  # any tool can read an embedded candidate


def test_externalize_once_then_every_derived_model_references_it(tmp_path):
    model = make_chain()
    mio.externalize(model, tmp_path, threshold=0)
    assert not any(t.HasField("raw_data") and t.raw_data for t in model.graph.initializer)
    assert (tmp_path / "bisector.weights").exists()
    out = mio.save(model, tmp_path / "a.onnx")
    x = np.ones((1, 16), np.float32)
    ref = make_chain()
    mio.save(ref, tmp_path / "ref.onnx")
    assert np.allclose(_run(out, {"x": x})[0], _run(tmp_path / "ref.onnx", {"x": x})[0])


def test_ir_version_is_lowered_for_onnxruntime():
    m = make_chain()
    m.ir_version = onnx.IR_VERSION
    mio.normalize_ir(m)
    # Whatever the installed pair (onnx 1.23 + onnxruntime 1.31 needs IR 14 -> 11; 1.32 takes 14),
    # the result is the newest IR the runtime accepts, and the runtime loads it.
    assert m.ir_version == min(onnx.IR_VERSION, mio.max_runtime_ir_version())
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    too_new = make_chain()
    too_new.ir_version = mio.max_runtime_ir_version() + 1
    assert mio.normalize_ir(too_new).ir_version == mio.max_runtime_ir_version()


def test_ir3_initializers_are_weights_not_inputs():
    m = make_ir3()
    assert len(m.graph.input) > 1
    mio.drop_initializer_inputs(m)
    assert [i.name for i in m.graph.input] == ["x"]
    assert m.ir_version >= 4


def test_parse_and_freeze_shapes():
    assert parse_shapes(["x:[1,3,224,224]", "y:[4]"]) == {"x": [1, 3, 224, 224], "y": [4]}
    assert parse_shapes(["x:[1,2] y:[3]"]) == {"x": [1, 2], "y": [3]}
    with pytest.raises(UserError, match="`input_shapes`"):
        parse_shapes(["x=[1,2]"])
    m = make_dynamic()
    with pytest.raises(UserError, match="dynamic shape"):
        freeze_inputs(m, {})
    with pytest.raises(UserError, match="not an input"):
        freeze_inputs(m, {"nope": [1, 16]})
    freeze_inputs(m, {"x": [3, 16]})
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 16]
    shapes = infer_shapes(m)
    assert all(d >= 0 for d in shapes[m.graph.output[0].name][1])


def test_unnamed_nodes_get_stable_names_and_named_ones_are_kept():
    a, b = name_nodes(make_unnamed()), name_nodes(make_unnamed())
    names = [n.name for n in a.graph.node]
    assert names == [n.name for n in b.graph.node]
    assert len(set(names)) == len(names) and all(names)
    original = [n.name for n in make_unnamed().graph.node]
    assert all(o == n for o, n in zip(original, names) if o)


def test_toposort_orders_a_shuffled_graph():
    m = make_chain()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    toposort(m)
    assert [n.name for n in m.graph.node] == [n.name for n in nodes]


def test_fold_constants_removes_shape_arithmetic():
    m = make_dynamic()
    freeze_inputs(m, {"x": [2, 16]})
    n_before = len(m.graph.node)
    folded = fold_constants(m)
    assert len(folded.graph.node) < n_before
    assert not any(n.op_type in ("Shape", "Gather", "Constant") for n in folded.graph.node)


def test_fold_constants_leaves_a_model_with_nothing_to_fold_as_it_is():
    model = make_chain()
    assert fold_constants(model) is model


def test_prepare_keeps_control_flow_nodes_whole(tmp_path):
    onnx.save(make_control_flow(), tmp_path / "cf.onnx")
    prepared = prepare(tmp_path / "cf.onnx", weights_dir=tmp_path / "w")
    index = GraphIndex(prepared.model)
    ops = set(index.ops)
    assert {"If", "Loop"} <= ops
    for i, op in enumerate(index.ops):
        if op in ("If", "Loop"):  # outer-scope reads of the bodies count as inputs
            assert index.inputs[i]


def test_cut_makes_cut_tensors_inputs_and_dangling_tensors_outputs():
    m = name_nodes(make_chain())
    cutter = SubgraphCutter(m, {})
    sub = cutter.cut({3, 4, 5})
    idx = cutter.index
    assert sub.inputs == [t for t in idx.inputs[3] if t not in idx.initializers]
    assert sub.outputs == idx.outputs[5]
    assert [n.name for n in sub.model.graph.node] == [idx.names[i] for i in (3, 4, 5)]
    # two separate pieces: both ends are outputs, both starts inputs
    sub2 = cutter.cut({2, 7})
    assert set(sub2.outputs) == set(idx.outputs[2] + idx.outputs[7])


def test_cut_exposes_a_tensor_also_read_outside_the_set():
    # x -> a=Relu(x) -> b=Neg(a) -> y=Add(a, b): `a` is read by Neg (in the set) and by Add (out)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["a"], name="relu"),
         onnx.helper.make_node("Neg", ["a"], ["b"], name="neg"),
         onnx.helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        "residual",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    cutter = SubgraphCutter(onnx.helper.make_model(g), {})
    sub = cutter.cut({0, 1})
    assert sub.inputs == ["x"]
    assert sub.outputs == ["a", "b"]  # a fault on `a` must not hide behind `neg`
    assert cutter.cut({0, 1, 2}).outputs == ["y"]


def test_fingerprint_is_stable_and_sensitive_to_weights(tmp_path):
    a, b = make_chain(seed=0), make_chain(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    c = make_chain(seed=1)
    assert model_fingerprint(a) != model_fingerprint(c)
    assert items_fingerprint("reduce", {1, 2}) == items_fingerprint("reduce", [2, 1])
    assert items_fingerprint("reduce", {1, 2}) != items_fingerprint("reduce", {1, 2}, "random")
