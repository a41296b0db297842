"""Tactics files: bisector's own JSON round trips; Polygraphy's TacticReplayData, written by
Polygraphy 0.53.6's own classes and encoder, reads; a broken file is a UserError naming it."""

from __future__ import annotations

import json

import pytest

from bisector.build.tactics import NotATacticsFile, Tactic, load, pairs, read_tactics, write_tactics
from bisector.errors import UserError

TACTICS = {
    "conv1": Tactic("conv1", "0x665ded9abbf88", "sm80_xmma_gemm_f32f32", "0x1814870c44ff0f8574df6e3dda04cbd7"),
    "matMul1_myl0_0": Tactic("matMul1_myl0_0", "0x3e9", "myelin", ""),
    "relu": Tactic("relu", "7"),
}


def test_ours_round_trips_with_metadata(tmp_path):
    path = write_tactics(tmp_path / "t.json", TACTICS, {"tensorrt": "10.13.0", "time_ms": {"conv1": 0.0112},
                                                         "builder": "tensorrt", "seed": 3})
    assert read_tactics(path) == TACTICS
    doc = json.loads(path.read_text())
    assert doc["format"] == "bisector-tactics" and doc["version"] == 1 and doc["tensorrt"] == "10.13.0"
    assert doc["layers"][0] == {"layer": "conv1", "tactic": "0x665ded9abbf88", "name": "sm80_xmma_gemm_f32f32",
                                "key": "0x1814870c44ff0f8574df6e3dda04cbd7", "time_ms": 0.0112}
    whole = load(path)
    assert whole.time_ms == {"conv1": 0.0112} and whole.source == "bisector"
    assert whole.meta == {"tensorrt": "10.13.0", "builder": "tensorrt", "seed": 3}
    assert list(whole.tactics) == list(TACTICS)  # file order kept
    assert pairs(whole.tactics) == {"conv1": "0x665ded9abbf88", "matMul1_myl0_0": "0x3e9", "relu": "7"}
    assert not list(tmp_path.glob(".*tmp"))


def test_metadata_cannot_take_the_format_keys(tmp_path):
    with pytest.raises(ValueError):
        write_tactics(tmp_path / "t.json", TACTICS, {"layers": []})


def polygraphy_replay(path):
    """A replay file written by Polygraphy itself: its TacticReplayData, Algorithm and TensorInfo
    classes and its JSON encoder. TensorInfo's constructor checks its dtype against tensorrt, which
    is not installed here, so the object is filled in directly; the encoder writes ``str(dtype)``,
    which for a trt.DataType is the same ``"DataType.FLOAT"`` text."""
    algorithm_selector = pytest.importorskip("polygraphy.backend.trt.algorithm_selector")

    def info(dtype, strides):
        t = object.__new__(algorithm_selector.TensorInfo)
        t.dtype, t.strides, t.vectorized_dim, t.components_per_element = f"DataType.{dtype}", strides, -1, -1
        return t

    data = algorithm_selector.TacticReplayData()
    data.add("conv1", algorithm_selector.Algorithm(0x80000006, 1001, (info("FLOAT", (768, 256, 16, 1)),),
                                                   (info("HALF", (512, 256, 16, 1)),)))
    data.add("(Unnamed Layer* 3) [Shuffle]", algorithm_selector.Algorithm(0, -3, (), ()))
    data.save(str(path))
    return path


def test_reads_polygraphy_tactic_replay_written_by_polygraphy(tmp_path):
    path = polygraphy_replay(tmp_path / "replay.json")
    doc = json.loads(path.read_text())
    assert doc["polygraphy_class"] == "TacticReplayData"
    assert doc["replay"]["conv1"]["polygraphy_class"] == "Algorithm"
    assert doc["replay"]["conv1"]["inputs"][0]["polygraphy_class"] == "TensorInfo"
    tactics = read_tactics(path)
    assert tactics == {
        "conv1": Tactic("conv1", "0x80000006:0x3e9", "FLOAT(768,256,16,1) -> HALF(512,256,16,1)"),
        "(Unnamed Layer* 3) [Shuffle]": Tactic("(Unnamed Layer* 3) [Shuffle]", "0x0:0xfffffffffffffffd"),
    }
    assert load(path).source == "polygraphy"


def test_reads_the_legacy_polygraphy_marker(tmp_path):
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps({"replay": {"fc": {"implementation": 1, "tactic": 2, "inputs": [], "outputs": [],
                                                  "polygraphy_serialized_json_type": "Algorithm"}},
                                "polygraphy_serialized_json_type": "TacticReplayData"}))
    assert read_tactics(path) == {"fc": Tactic("fc", "0x1:0x2")}


@pytest.mark.parametrize("text, kind, words", [
    ("\x00\x01engine bytes", NotATacticsFile, "not JSON"),
    ('{"something": "else"}', NotATacticsFile, "not a tactics file"),
    ('{"format": "bisector-tactics", "version": 1}', UserError, '"layers"'),
    ('{"format": "bisector-tactics", "version": 9, "layers": []}', UserError, "version 9"),
    ('{"format": "bisector-tactics", "version": 1, "layers": [{"layer": "a"}]}', UserError, "layers[0]"),
    ('{"format": "bisector-tactics", "version": 1, "layers": [{"layer": "a", "tactic": "1", "time_ms": "x"}]}',
     UserError, "time_ms"),
    ('{"format": "bisector-tactics", "version": 1, "layers": [{"layer": "a", "tactic": "1"}, '
     '{"layer": "a", "tactic": "2"}]}', UserError, "twice"),
    ('{"replay": {"fc": {"tactic": 2}}, "polygraphy_class": "TacticReplayData"}', UserError, "'fc'"),
    ('{"replay": [], "polygraphy_class": "TacticReplayData"}', UserError, "replay"),
])
def test_a_malformed_file_is_a_user_error_naming_it(tmp_path, text, kind, words):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(kind) as err:
        read_tactics(path)
    assert str(path) in err.value.message and words in err.value.message
    if kind is UserError:
        assert not isinstance(err.value, NotATacticsFile)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing.json"):
        read_tactics(tmp_path / "missing.json")
