"""The build hunt's parts without a hunt: ``--until`` parsing, the command builder's command line
(placeholders, relative paths, forcing), and the one-line refusals of builders that cannot run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bisector.checks.base import Verdict
from bisector.commands.build import BuildCommand, BuildOptions, Until, parse_until
from bisector.commands.build_builders import BuildPaths, CommandBuilder, TrtexecBuilder, make_builder
from bisector.errors import UserError


def paths(tmp_path: Path) -> BuildPaths:
    w = tmp_path / "iterations" / "0003"
    return BuildPaths(model=tmp_path / "m.onnx", workdir=w, engine=w / "polygraphy_debug.engine",
                      tactics=w / "tactics.json", log=w / "build.log")


@pytest.mark.parametrize("text, want", [
    ("bad", Until(verdict=Verdict.BAD)), ("good", Until(verdict=Verdict.GOOD)), ("fail", Until(verdict=Verdict.BAD)),
    ("150", Until(builds=150)), ("8h", Until(seconds=8 * 3600)), ("30m", Until(seconds=1800)),
    ("1.5h", Until(seconds=5400)), ("90s", Until(seconds=90)), ("1d", Until(seconds=86400)),
])
def test_until_reads_a_verdict_a_number_of_builds_or_a_duration(text, want):
    assert parse_until(text) == want


@pytest.mark.parametrize("text", ["0", "-3", "8x", "soon", "0h", ""])
def test_a_bad_until_is_a_user_error_naming_the_field(text):
    with pytest.raises(UserError, match="`until`"):
        parse_until(text)


def test_the_command_builder_fills_its_placeholders_and_finds_relative_paths_where_bisector_started(tmp_path):
    (tmp_path / "b.py").write_text("")
    b = CommandBuilder("python b.py {model} -o {engine} --tactics={tactics} --seed {build}", launch_dir=tmp_path)
    p = paths(tmp_path)
    assert b.argv(p, 7) == ["python", str(tmp_path / "b.py"), str(p.model), "-o", str(p.engine),
                            f"--tactics={p.tactics}", "--seed", "7"]


def test_forcing_appends_load_tactics_or_fills_the_force_placeholder(tmp_path):
    p, forced = paths(tmp_path), tmp_path / "top.json"
    plain = CommandBuilder("python b.py {model} {engine} {tactics}", launch_dir=tmp_path)
    assert plain.argv(p, 0, forced)[-2:] == ["--load-tactics", str(forced)]
    placed = CommandBuilder("python b.py {engine} {tactics} --replay={force}", launch_dir=tmp_path)
    assert placed.argv(p, 0, forced)[-1] == f"--replay={forced}"
    assert placed.argv(p, 0) == ["python", "b.py", str(p.engine), str(p.tactics)]  # no force: the token goes


@pytest.mark.parametrize("cmd, match", [
    (None, "needs `build_cmd`"), ("python b.py {model}", "names no {engine} and no {tactics}"),
    ("python b.py {engine}", "names no {tactics}"), ("no-such-program-here {engine} {tactics}", "not a program"),
])
def test_the_command_builder_refuses_a_command_that_cannot_build(tmp_path, cmd, match):
    with pytest.raises(UserError, match=match):
        CommandBuilder(cmd, launch_dir=tmp_path).validate()


def test_an_unknown_placeholder_or_a_missing_build_script_is_refused_up_front(tmp_path):
    (tmp_path / "b.py").write_text("")
    with pytest.raises(UserError, match=r"unknown placeholder\(s\) \{buld\}; known: \{model\}, \{engine\}"):
        CommandBuilder(f"{sys.executable} b.py {{engine}} {{tactics}} --seed {{buld}}", launch_dir=tmp_path).validate()
    with pytest.raises(UserError, match="the build script nope.py does not exist"):
        CommandBuilder(f"{sys.executable} nope.py {{engine}} {{tactics}}", launch_dir=tmp_path).validate()
    with pytest.raises(UserError, match="does not exist"):
        CommandBuilder("python3 -u nope.py {engine} {tactics}", launch_dir=tmp_path).validate()
    CommandBuilder(f"{sys.executable} b.py {{engine}} {{tactics}} --seed {{build}}", launch_dir=tmp_path).validate()


def test_a_failing_build_is_one_user_error_with_its_last_line_and_its_log(tmp_path):
    p = paths(tmp_path)
    p.workdir.mkdir(parents=True)
    script = tmp_path / "b.py"
    script.write_text("import sys\nprint('tactic 0x2 blew up')\nsys.exit(3)\n")
    with pytest.raises(UserError, match=r"build 4 failed \(exit 3\): tactic 0x2 blew up") as err:
        CommandBuilder(f"{sys.executable} b.py {{engine}} {{tactics}}", launch_dir=tmp_path).build(p, 4)
    assert str(p.log) in err.value.hint


def test_a_build_that_writes_no_tactics_file_is_refused(tmp_path):
    p = paths(tmp_path)
    p.workdir.mkdir(parents=True)
    (tmp_path / "b.py").write_text("import sys\nopen(sys.argv[1], 'w').write('engine')\n")
    with pytest.raises(UserError, match=r"wrote no tactics file \(tactics.json\)"):
        CommandBuilder(f"{sys.executable} b.py {{engine}} {{tactics}}", launch_dir=tmp_path).build(p, 0)


def test_a_build_past_its_timeout_is_killed(tmp_path):
    p = paths(tmp_path)
    p.workdir.mkdir(parents=True)
    (tmp_path / "b.py").write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(UserError, match="ran past `build_timeout`"):
        CommandBuilder(f"{sys.executable} b.py {{engine}} {{tactics}}", timeout_s=0.3, launch_dir=tmp_path).build(p, 0)


def test_trtexec_command_line(tmp_path):
    p = paths(tmp_path)
    argv = TrtexecBuilder("/opt/trt/bin/trtexec").argv(p)
    assert argv == ["/opt/trt/bin/trtexec", f"--onnx={p.model}", f"--saveEngine={p.engine}",
                    f"--timingCacheFile={p.workdir / 'timing.cache'}", "--profilingVerbosity=detailed",
                    f"--exportLayerInfo={p.workdir / 'layers.json'}", "--verbose"]


def test_builders_that_cannot_run_here_say_so_in_one_line(tmp_path):
    with pytest.raises(UserError, match="trtexec .* is not on this machine's PATH"):
        make_builder("trtexec", trtexec="no-trtexec-here").validate()
    try:
        import tensorrt  # noqa: F401
        has_trt = hasattr(tensorrt, "Builder")
    except (ImportError, OSError):
        has_trt = False
    if not has_trt:
        with pytest.raises(UserError, match="tensorrt"):
            make_builder("tensorrt").validate()
    with pytest.raises(UserError, match="`builder` 'cuda'"):
        make_builder("cuda")
    with pytest.raises(UserError, match="`build_cmd` is for the command builder"):
        make_builder("tensorrt", build_cmd="python b.py")


def test_the_command_is_refused_before_a_session_for_bad_options(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    ok = dict(model=model, build_cmd=f"{sys.executable} b.py {{engine}} {{tactics}}", launch_dir=tmp_path)
    for change, match in (({"max_builds": 0}, "`max_builds`"), ({"until": "never"}, "`until`"),
                          ({"iter_artifact": "a/b.engine"}, "`iter_artifact`"),
                          ({"model": tmp_path / "none.onnx"}, "no such model"),
                          ({"confidence": 1.5}, "`confidence`")):
        with pytest.raises(UserError, match=match):
            BuildCommand(BuildOptions(**{**ok, **change})).check_outputs()


def test_the_command_round_trips_through_json_with_its_launch_directory(tmp_path):
    cmd = BuildCommand(BuildOptions(model=tmp_path / "m.onnx", build_cmd="python b.py {engine} {tactics}",
                                    until="8h", max_builds=5, keep_engines=True))
    assert cmd.options.launch_dir == Path.cwd()
    again = BuildCommand.from_json(cmd.to_json())
    assert again.options == cmd.options and again.name == "build"


# ------------------------------------------------------------------ TensorRT: recorded samples
TRT_DATA = Path(__file__).resolve().parent / "backends" / "data" / "trt"


@pytest.mark.parametrize("info", ["engine_info_10x.json", "engine_info_11x.json"])
def test_tensorrt_tactics_come_from_the_inspector_with_keys_and_hashes_from_the_verbose_log(tmp_path, info):
    from bisector.backends.trt_parse import parse_autotune_log, parse_layer_information
    from bisector.build.tactics import load
    from bisector.commands.build_builders import write_engine_tactics

    layers = parse_layer_information((TRT_DATA / info).read_text())
    records = parse_autotune_log((TRT_DATA / "autotune_verbose_trtexec.log").read_text())
    written = load(write_engine_tactics(tmp_path / "t.json", layers, records, {"builder": "trtexec"}))
    t = written.tactics
    assert list(t) == [layer.name for layer in layers]
    conv = t["/conv1/Conv + /relu1/Relu"]
    assert (conv.tactic, conv.key) == ("0x5e2f3c8a1b7d9e01", "0x0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    mm1 = t["matMul1_myl0_0"]  # a Myelin layer: the log's selected hash, the kernel as its name
    assert (mm1.tactic, mm1.key) == ("0x71c2f8e0ad3b5", "0x2c0a5e9d14b7f3a8c6e1d2f0b9a87654")
    assert mm1.name.startswith("sm80_xmma_gemm_f16f16")
    assert t["matMul2_myl0_2"].tactic == "0x665ded9abbf88"
    soft = t["__myl_TraMaxSubExpSum_myl0_1"]  # no autotuning record names it: the inspector's tactic, no key
    assert soft.key == "" and soft.tactic.startswith("__myl_TraMaxSubExpSum_0x")
    assert written.meta["builder"] == "trtexec" and written.time_ms["matMul2_myl0_2"] == pytest.approx(0.008192)


def _tensorrt_or_reason() -> str | None:
    try:
        from bisector.backends.tensorrt import import_trt

        import_trt()
    except UserError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_tensorrt_or_reason() is not None, reason=f"needs TensorRT: {_tensorrt_or_reason()}")
def test_real_tensorrt_build_records_every_layer_s_tactic_and_its_timing_cache_key(tmp_path):
    import onnx

    from bisector.build.tactics import read_tactics
    from bisector.commands.build_builders import TensorRTBuilder
    from fixtures.models import make_transformer

    p = paths(tmp_path)
    p.workdir.mkdir(parents=True)
    onnx.save(make_transformer(), str(p.model))
    TensorRTBuilder().build(p, 0)
    tactics = read_tactics(p.tactics)
    assert p.engine.stat().st_size > 0 and tactics
    assert any(t.key for t in tactics.values()), "no layer got a timing-cache key from the VERBOSE log"


def test_the_live_view_of_a_hunt_shows_the_pass_rate_builds_per_hour_and_the_top_suspect():
    import io

    from rich.console import Console

    from bisector.cli.progress import LiveDisplay

    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    view = LiveDisplay(console, "build")
    view.started -= 3600  # 4 builds in an hour
    view.state = {"search_phase": "hunt", "verdicts": {"good": 3, "bad": 1, "skip": 0}, "checks": 4,
                  "status": "top suspect fc1 tactic 0x2: p = 0.01"}
    console.print(view._render())
    text = console.file.getvalue()
    assert "pass rate 75%" in text and "builds per hour 4 " in text and "top suspect fc1 tactic 0x2" in text
