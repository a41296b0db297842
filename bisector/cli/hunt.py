"""``bisector build``: the flaky-build hunt (bisector/commands/build.py). Builds the model again and
again with the chosen builder, checks each engine, records every layer's tactic, and ranks the
tactics that go with failing builds into ``result/suspects.json``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from bisector.cli.options import CheckOptions, CompareOptions, SessionOptions, uses

BUILD_CMD_HELP = ("The command builder's command line, run in each build's directory: {model}, {engine} (the engine "
                  "to write; also {artifact}), {tactics} (the tactics file to write: bisector's or Polygraphy's "
                  "format), {log}, {build} (the build number)")


@uses(CheckOptions, SessionOptions)
def build(
    chk: CheckOptions,
    s: SessionOptions,
    model: Annotated[Path, typer.Argument(help="The ONNX model to build")],
    until: Annotated[str, typer.Option(
        "--until", help="Stop at the first good or bad build, after N builds, or after a duration (8h, 30m)")] = "bad",
    max_builds: Annotated[Optional[int], typer.Option("--max-builds", help="Build at most N times")] = None,
    builder: Annotated[str, typer.Option("--builder", help="command, tensorrt or trtexec")] = "command",
    build_cmd: Annotated[Optional[str], typer.Option("--build-cmd", help=BUILD_CMD_HELP)] = None,
    build_timeout: Annotated[Optional[float], typer.Option(
        "--build-timeout", help="Seconds before a build is killed (its whole process group)")] = None,
    trtexec: Annotated[str, typer.Option("--trtexec", help="The trtexec program (--builder trtexec)")] = "trtexec",
    keep_engines: Annotated[bool, typer.Option(
        "--keep-engines", help="Sort each build's engine into good/ and bad/ too (not only its tactics file)")] = False,
    confidence: Annotated[Optional[float], typer.Option(
        "--confidence", help="Stop as soon as the top suspect is this sure (0.99: its p-value, times the number of "
        "pairs, under 0.01, and 10 times ahead of the next)")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Write the ranked suspects here too (they are always in the session's "
        "result/suspects.json)")] = None,
):
    """Hunt a flaky engine build: build again and again, check each engine, rank the tactics that go with failures.

    Each build is checked like a candidate: the engine is polygraphy_debug.engine (or --iter-artifact)
    in the build's directory; its tactics file, its build log and, with --keep-engines, its engine
    are sorted into good/ and bad/. The (layer, tactic) pairs are ranked by a one-sided Fisher exact
    test (result/suspects.json, best first). A hunt killed overnight goes on with `bisector resume`."""
    from bisector.cli import build as flags
    from bisector.commands.build import BuildCommand, BuildOptions, parse_until

    parse_until(until)  # a bad --until is refused before a session exists
    options = BuildOptions(model=model.absolute(), builder=builder, build_cmd=build_cmd, until=until,
                           max_builds=max_builds, keep_engines=keep_engines,
                           iter_artifact=s.iter_artifact or "polygraphy_debug.engine", build_timeout=build_timeout,
                           trtexec=trtexec, output=output.absolute() if output else None, confidence=confidence)
    command = BuildCommand(options)
    command.check_outputs()
    return flags.Invocation(command, flags.check_spec(chk, CompareOptions()), flags.run_options(s), flags.display(s))


@uses(SessionOptions)
def confirm(
    s: SessionOptions,
    hunt: Annotated[Path, typer.Argument(help="The build hunt's session directory")],
    repeat: Annotated[int, typer.Option("--repeat", help="Builds per arm (forced away, forced on)")] = 5,
    layer: Annotated[Optional[str], typer.Option(
        "--layer", help="The layer to force (default: the top suspect's)")] = None,
    tactic: Annotated[Optional[str], typer.Option("--tactic", help="Its suspected tactic (with --layer)")] = None,
):
    """Confirm a build hunt's top suspect: rebuild with it forced away and forced on, check each build.

    The failure follows the suspect when builds with it forced on fail and builds with it forced away
    do not. The command builder gets the one-layer tactics file as --load-tactics FILE appended to
    --build-cmd, or where its {force} placeholder is. The hunt's check is used; the confirm session
    is HUNT/confirm unless --session says otherwise."""
    import dataclasses

    from bisector.artifacts.session import load_meta
    from bisector.checks.spec import CheckSpec
    from bisector.cli import build as flags
    from bisector.commands.build_confirm import ConfirmCommand, ConfirmOptions
    from bisector.errors import UserError

    if (layer is None) != (tactic is None):
        raise UserError("--layer and --tactic go together: give both, or neither for the top suspect")
    root = hunt.absolute()
    spec = load_meta(root).get("spec") or {}
    if "check" not in spec:
        raise UserError(f"{root} was made by an older bisector: its check cannot be rebuilt")
    command = ConfirmCommand(ConfirmOptions(hunt=root, repeat=repeat, layer=layer, tactic=tactic))
    command.check_outputs()
    run = flags.run_options(s)
    if run.session is None:
        run = dataclasses.replace(run, session=root / "confirm")
    return flags.Invocation(command, CheckSpec.from_json(spec["check"]), run, flags.display(s))
