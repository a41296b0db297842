"""Option groups shared by the commands, declared once (Polygraphy's design: a subtool says which
groups it uses; ``reduce``, ``precision`` and ``repeat`` take the same check flags from here).

A group is a dataclass whose fields carry their typer option; :func:`uses` splices the fields of
the groups a command names into its signature and hands the command one object per group.

Polygraphy's flags take several values after one flag (``--input-shapes x:[1,3] y:[4]``) and
``--check`` takes the rest of the command line; :func:`split_argv` rewrites argv into the
one-value-per-flag form typer parses and cuts the check command off.
"""

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

# Flags that take one or more values, as in Polygraphy (argparse nargs="+").
MULTI_VALUE_FLAGS = frozenset({
    "--input-shapes", "--model-input-shapes", "--model-inputs", "--trt-opt-shapes", "--load-inputs",
    "--load-input-data", "--val-range", "--keep-fp32", "--atol", "--rtol", "--check-error-stat", "--fail-code",
    "--fail-returncode", "--ignore-fail-code", "--ignore-fail-returncode", "--fail-regex", "--artifacts",
})
CHECK_FLAGS = ("--check", "--check-inference")  # Polygraphy's two names


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def split_argv(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``(options, check_argv)``: everything after ``--check`` is the check command, untouched."""
    check = None
    at = [i for i, a in enumerate(argv) if a in CHECK_FLAGS]
    if at:
        argv, check = argv[:at[0]], argv[at[0] + 1:]
    out: list[str] = []
    flag = None
    after_flag = False
    for tok in argv:
        if tok.startswith("-") and len(tok) > 1 and not _is_number(tok):  # -v, -vv, -j4, --flag, not -1
            name, eq, _ = tok.partition("=")
            flag = name if name in MULTI_VALUE_FLAGS and not eq else None
            out.append(tok)
            after_flag = True
            continue
        if flag is not None and not after_flag:
            out.append(flag)  # a further value of a multi-value flag: repeat the flag
        out.append(tok)
        after_flag = False
    return out, check


CONTEXT_PARAMS = ("ui",)  # a command's parameters filled from the click context, not from flags


def uses(*groups):
    """Decorator: add the fields of ``groups`` to the command's options; the command receives one
    instance per group, in the parameters annotated with the group's class. A group's fields named
    in its ``FROM_CONTEXT`` are no flags: they come from the click context's ``obj`` (the check
    command that :func:`split_argv` cut off, which typer never sees), and so do the command's own
    parameters named in ``CONTEXT_PARAMS`` (the consoles of this call)."""

    def deco(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.annotation not in groups and p.name not in CONTEXT_PARAMS]
        spliced = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                   for g in groups for f in fields(g) if f.name not in getattr(g, "FROM_CONTEXT", ())]
        ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)

        def command(ctx: typer.Context, **kwargs):
            given = ctx.obj or {}
            for p in sig.parameters.values():
                if p.annotation in groups:
                    g = p.annotation
                    from_ctx = getattr(g, "FROM_CONTEXT", ())
                    kwargs[p.name] = g(**{f.name: given.get(f.name) if f.name in from_ctx else kwargs.pop(f.name)
                                          for f in fields(g)})
            kwargs.update({name: given.get(name) for name in CONTEXT_PARAMS if name in sig.parameters})
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=[ctx_param, *own, *spliced])
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return deco


WEIGHTS_HELP = ("How candidates get the session's weights: link (hard links, no copy; onnx.load refuses them), "
                "embed, or auto: link for --compare; for a command check, embed below 64 MiB, else a .data file "
                "of the candidate's own tensors")


@dataclass
class DataOptions:
    input_shapes: Annotated[Optional[list[str]], typer.Option(
        "--input-shapes", "--model-input-shapes", "--model-inputs", "--trt-opt-shapes",
        help="Freeze input shapes: x:[1,3,224,224] y:[4]",
        rich_help_panel="Data")] = None
    load_inputs: Annotated[Optional[list[Path]], typer.Option(
        "--load-inputs", "--load-input-data", help="Input samples: Polygraphy JSON or .npz (several files add samples)",
        rich_help_panel="Data")] = None
    data_loader_script: Annotated[Optional[str], typer.Option(
        "--data-loader-script", help="Input samples from a Python script: path.py[:function] (default load_data), "
        "a function that takes no argument and yields {input name: array} dicts", rich_help_panel="Data")] = None
    external_data_dir: Annotated[Optional[Path], typer.Option(
        "--external-data-dir", "--load-external-data", "--ext", help="Directory of the model's external weights, "
        "if not beside the model", rich_help_panel="Data")] = None
    save_inputs: Annotated[Optional[Path], typer.Option(
        "--save-inputs", help="Write the input samples used (Polygraphy JSON, or .npz)", rich_help_panel="Data")] = None
    seed: Annotated[int, typer.Option("--seed", help="Seed of generated inputs", rich_help_panel="Data")] = 1
    val_range: Annotated[Optional[list[str]], typer.Option(
        "--val-range", help="Range of generated values: [0,1] or x:[-1,1]", rich_help_panel="Data")] = None
    samples: Annotated[int, typer.Option(
        "--samples", "--iterations", "--iters", help="Number of generated input samples",
        rich_help_panel="Data")] = 1
    force_fallback_shape_inference: Annotated[bool, typer.Option(
        "--force-fallback-shape-inference", help="Accepted for Polygraphy's command lines; bisector always "
        "takes the shapes of cut tensors from a real onnxruntime run", rich_help_panel="Data")] = False


@dataclass
class CompareOptions:
    compare: Annotated[bool, typer.Option(
        "--compare", help="Check in-process: compare the target with the reference (no --check)",
        rich_help_panel="Compare")] = False
    provider: Annotated[str, typer.Option(
        "--provider", help="Target execution provider: cpu, cuda, tensorrt", rich_help_panel="Compare")] = "cpu"
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", help="Run the target in fp16 or bf16 (I/O types kept); for precision, the precision "
        "to lower to", rich_help_panel="Compare")] = None
    keep_fp32: Annotated[Optional[list[str]], typer.Option(
        "--keep-fp32", help="Nodes kept in fp32: names, or @keep.json", rich_help_panel="Compare")] = None
    realize: Annotated[Optional[str], typer.Option(
        "--realize", help="true (the mixed model) or emulate (fp32 graph with fp16 round trips, for onnxruntime "
        "on the CPU); default: emulate where the check runs onnxruntime on the CPU, else true",
        rich_help_panel="Compare")] = None
    reference: Annotated[str, typer.Option(
        "--reference", help="onnxrt (fp32 on the CPU) or fp64 (the ONNX reference evaluator)",
        rich_help_panel="Compare")] = "onnxrt"
    atol: Annotated[Optional[list[str]], typer.Option(
        "--atol", help="Absolute tolerance, per output: 1e-5 out0:1e-3", rich_help_panel="Compare")] = None
    rtol: Annotated[Optional[list[str]], typer.Option(
        "--rtol", help="Relative tolerance, per output: 1e-5 out0:1e-3", rich_help_panel="Compare")] = None
    check_error_stat: Annotated[Optional[list[str]], typer.Option(
        "--check-error-stat", help="elemwise, max, mean, median or quantile (per output too)",
        rich_help_panel="Compare")] = None
    error_quantile: Annotated[Optional[float], typer.Option(
        "--error-quantile", help="Quantile for --check-error-stat quantile (0.99)", rich_help_panel="Compare")] = None
    validate: Annotated[bool, typer.Option(
        "--validate", help="NaN or Inf in the target fails", rich_help_panel="Compare")] = False


@dataclass
class CheckOptions:
    FROM_CONTEXT = ("check_argv",)  # everything after --check, cut off by split_argv

    check_argv: Optional[list[str]] = None
    fail_code: Annotated[Optional[list[int]], typer.Option(
        "--fail-code", "--fail-returncode", help="Only these exit codes fail", rich_help_panel="Check")] = None
    ignore_fail_code: Annotated[Optional[list[int]], typer.Option(
        "--ignore-fail-code", "--ignore-fail-returncode", help="These exit codes pass", rich_help_panel="Check")] = None
    fail_regex: Annotated[Optional[list[str]], typer.Option(
        "--fail-regex", help="Output matching these regexes fails", rich_help_panel="Check")] = None
    show_output: Annotated[bool, typer.Option(
        "--show-output", help="Show the check's output for every iteration", rich_help_panel="Check")] = False
    hide_fail_output: Annotated[bool, typer.Option(
        "--hide-fail-output", help="Do not show the output of failing iterations", rich_help_panel="Check")] = False
    check_timeout: Annotated[Optional[float], typer.Option(
        "--check-timeout", help="Seconds before a check is killed (its whole process group)",
        rich_help_panel="Check")] = None
    on_timeout: Annotated[str, typer.Option(
        "--on-timeout", help="A timed-out check counts as: bad, skip, abort", rich_help_panel="Check")] = "bad"
    on_crash: Annotated[str, typer.Option(
        "--on-crash", help="A check killed by a signal counts as: bad, skip, abort", rich_help_panel="Check")] = "bad"
    check_func: Annotated[Optional[str], typer.Option(
        "--check-func", help="Python check: module:function(artifact_path) -> bool", rich_help_panel="Check")] = None
    check_script: Annotated[Optional[Path], typer.Option(
        "--check-script", help="Python check: a file defining check(artifact_path)", rich_help_panel="Check")] = None
    repeat: Annotated[int, typer.Option(
        "--repeat", help="Run each check K times (flaky checks)", rich_help_panel="Check")] = 1
    vote: Annotated[str, typer.Option(
        "--vote", help="Combine repeats: any, majority, all (bad if ... runs are bad)",
        rich_help_panel="Check")] = "any"


@dataclass
class SessionOptions:
    session: Annotated[Optional[Path], typer.Option(
        "--session", help="Session directory (default: a new timestamped one)", rich_help_panel="Session")] = None
    jobs: Annotated[int, typer.Option(
        "-j", "--jobs", help="Checks run at once (speculative; same answer as -j 1)", rich_help_panel="Session")] = 1
    devices: Annotated[Optional[str], typer.Option(
        "--devices", help="One CUDA_VISIBLE_DEVICES per worker: 0,1", rich_help_panel="Session")] = None
    quiet: Annotated[bool, typer.Option(
        "-q", "--quiet", help="No progress: only the answer, warnings and errors (a line per check goes to a "
        "file or pipe, a live display to a terminal, without -q)", rich_help_panel="Session")] = False
    json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON summary object on stdout (the answer, its files, the checks); people's "
        "output goes to stderr", rich_help_panel="Session")] = False
    events: Annotated[Optional[Path], typer.Option(
        "--events", help="Append a JSON-lines event stream to this file", rich_help_panel="Session")] = None
    artifacts: Annotated[Optional[list[str]], typer.Option(
        "--artifacts", help="Files to sort into good/ and bad/ after each check", rich_help_panel="Session")] = None
    iter_artifact: Annotated[Optional[str], typer.Option(
        "--iter-artifact", "--intermediate-artifact", help="Name of the artifact in each iteration directory",
        rich_help_panel="Session")] = None
    art_dir: Annotated[Optional[Path], typer.Option(
        "--art-dir", "--artifacts-dir", help="Where --artifacts are sorted into good/ and bad/ (default: the session)",
        rich_help_panel="Session")] = None
    iter_info: Annotated[Optional[str], typer.Option(
        "--iter-info", "--iteration-info", help="Write {\"iteration\": N} to this JSON file before each check "
        "(relative: in the iteration directory)", rich_help_panel="Session")] = None
    no_remove_intermediate: Annotated[bool, typer.Option(
        "--no-remove-intermediate", help="Keep each iteration's artifact", rich_help_panel="Session")] = False
    force_output: Annotated[bool, typer.Option(
        "--force-output", help="Write -o even when the search is inconclusive (exit 4)",
        rich_help_panel="Session")] = False
    load_debug_replay: Annotated[Optional[Path], typer.Option(
        "--load-debug-replay", help="Import the verdicts of a Polygraphy debug replay",
        rich_help_panel="Session")] = None
    executor: Annotated[str, typer.Option(
        "--executor", help="Where checks run: local (threads here) or ray (a Ray task each; pip install "
        "'bisector[ray]')", rich_help_panel="Session")] = "local"
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="The Ray cluster (ray start --head prints it; default: a local one)",
        rich_help_panel="Session")] = None
    gpus_per_check: Annotated[float, typer.Option(
        "--gpus-per-check", help="GPUs Ray gives each check (it sets CUDA_VISIBLE_DEVICES)",
        rich_help_panel="Session")] = 0
    ray_files: Annotated[str, typer.Option(
        "--ray-files", help="How a check's files reach its Ray node: shared (the session directory on NFS or "
        "Lustre), ship (through Ray's object store, up to 512 MiB each way) or auto (shared where every node "
        "sees the session directory)", rich_help_panel="Session")] = "auto"
