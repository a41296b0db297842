"""From parsed flags to what the runner takes: the check (``CheckSpec``), the fields every
candidate command shares, the run options, and what to print about them first.

Every path is made absolute here, so that ``session.json`` holds paths that work from anywhere
(a resume needs no ``chdir``; checks run in the iteration directories).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bisector.api import RunOptions
from bisector.checks.spec import CheckSpec, CompareSpec
from bisector.cli.options import CheckOptions, CompareOptions, DataOptions, SessionOptions
from bisector.errors import UserError, one_of

# What only the in-process compare check reads (precision reads --precision, --realize, --keep-fp32
# itself and builds its check without them).
COMPARE_ONLY_FLAGS = (("--provider", "provider"), ("--precision", "precision"), ("--keep-fp32", "keep_fp32"),
                      ("--realize", "realize"), ("--atol", "atol"), ("--rtol", "rtol"),
                      ("--check-error-stat", "check_error_stat"), ("--error-quantile", "error_quantile"),
                      ("--validate", "validate"))


# The one table from option fields to their flags. Errors below the CLI name fields in backticks
# (`jobs must be at least 1`); the CLI shows the flag instead (`render_fields`).
FLAGS = {"output": "--output", "min_good": "--min-good", "save_inputs": "--save-inputs", "jobs": "-j/--jobs",
         "session": "--session", "iter_info": "--iter-info", "repeat": "--repeat", "vote": "--vote",
         "fail_regex": "--fail-regex", "on_crash": "--on-crash", "on_timeout": "--on-timeout",
         "check_func": "--check-func", "check_script": "--check-script", "show_output": "--show-output",
         "hide_fail_output": "--hide-fail-output", "check_timeout": "--check-timeout", "val_range": "--val-range",
         "check_error_stat": "--check-error-stat", "error_quantile": "--error-quantile", "until": "--until",
         "load_outputs": "--load-outputs", "load_inputs": "--load-inputs", "keep_fp32": "--keep-fp32",
         "constraints": "--precision-constraints", "data_loader_script": "--data-loader-script",
         "external_data_dir": "--external-data-dir", "input_shapes": "--input-shapes", "realize": "--realize",
         "precision": "--precision", "outputs": "--outputs",
         "save_outputs": "--save-outputs", "builder": "--builder", "build_cmd": "--build-cmd",
         "max_builds": "--max-builds", "keep_engines": "--keep-engines", "build_timeout": "--build-timeout",
         "trtexec": "--trtexec", "iter_artifact": "--iter-artifact", "hunt": "HUNT", "layer": "--layer",
         "tactic": "--tactic", "confidence": "--confidence",
         "executor": "--executor", "ray_address": "--ray-address", "gpus_per_check": "--gpus-per-check",
         "ray_files": "--ray-files", "devices": "--devices"}


def render_fields(text: str | None) -> str | None:
    """``text`` with each backticked field name (`` `jobs` ``) shown as its flag (``-j/--jobs``)."""
    import re

    if text is None:
        return None
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m[1], m[0]), text)


def moved_outputs(before, after) -> list[str]:
    """``--output: NEW (the original command wrote OLD)`` for each of the command's output fields
    (``OUTPUT_FIELDS``) whose path changed."""
    out = []
    for f in after.OUTPUT_FIELDS:
        old, new = getattr(before.options, f, None), getattr(after.options, f, None)
        if new is not None and old != new:
            out.append(f"{FLAGS.get(f, f)}: {new}" + (f" (the original command wrote {old})" if old else ""))
    return out


@dataclass(frozen=True)
class Display:
    """How the CLI shows a run: ``quiet`` (no progress), ``json`` (one summary object on stdout),
    ``events`` (a JSON-lines file)."""

    quiet: bool = False
    json: bool = False
    events: Path | None = None


@dataclass
class Invocation:
    """A command ready to run: the runner's three arguments, how to show it, what to say first
    (``notes`` dim, ``warnings`` yellow), and, for a stored command (resume, replay), the question
    to ask before it runs (``confirm``: where it comes from and why it may not be the user's)."""

    command: Any
    check: CheckSpec
    run: RunOptions
    display: Display = Display()
    argv: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    confirm: tuple[str, str | None, bool] | None = None  # (source, why foreign or None, --yes)


def compare_spec(c: CompareOptions) -> CompareSpec:
    from bisector.commands.compare import read_keep
    from bisector.model.precision import PRECISIONS, REALIZE_MODES

    if c.precision is not None:
        one_of("--precision", c.precision, tuple(PRECISIONS))
    if c.realize is not None:
        one_of("--realize", c.realize, REALIZE_MODES)
    spec = CompareSpec(provider=c.provider, precision=c.precision, keep=tuple(sorted(read_keep(c.keep_fp32))),
                       realize=c.realize, atol=tuple(c.atol or ()), rtol=tuple(c.rtol or ()),
                       check_error_stat=tuple(c.check_error_stat or ()), error_quantile=c.error_quantile,
                       validate=c.validate)
    spec.config()  # a bad --atol/--rtol/--check-error-stat is refused now, before a session exists
    return spec


def check_spec(chk: CheckOptions, cmp: CompareOptions) -> CheckSpec:
    """The check the flags ask for: --check CMD, --check-func/--check-script, --compare, or a person
    (``CheckSpec.build`` refuses a bad --repeat or --vote)."""
    argv = chk.check_argv
    given = [name for name, on in (("--check", argv is not None), ("--check-func", chk.check_func),
                                   ("--check-script", chk.check_script), ("--compare", cmp.compare)) if on]
    if len(given) > 1:
        raise UserError(f"{given[0]} and {given[1]} exclude each other: give one kind of check")
    if not cmp.compare:
        defaults = CompareOptions()
        for flag, name in COMPARE_ONLY_FLAGS:
            if getattr(cmp, name) != getattr(defaults, name):
                kind = given[0] if given else "an interactive check"
                raise UserError(f"{flag} sets the in-process comparison (--compare), which {kind} does not use",
                                hint="put it in the check command instead, or check with --compare")
    common = {"repeat": chk.repeat, "vote": chk.vote, "on_crash": chk.on_crash}
    if argv is not None:
        spec = CheckSpec.command(argv, fail_codes=_tuple(chk.fail_code), ignore_fail_codes=_tuple(chk.ignore_fail_code),
                                 fail_regexes=_tuple(chk.fail_regex), timeout_s=chk.check_timeout,
                                 on_timeout=chk.on_timeout, show_output=chk.show_output,
                                 hide_fail_output=chk.hide_fail_output, **common)
    elif chk.check_func:
        spec = CheckSpec(kind="func", func=chk.check_func, **common)
    elif chk.check_script:
        spec = CheckSpec(kind="script", script=str(Path(chk.check_script).absolute()), **common)
    elif cmp.compare:
        spec = CheckSpec(kind="compare", compare=compare_spec(cmp), **common)
    else:
        spec = CheckSpec(kind="interactive", **common)
    check = spec.build()  # a command that does not exist, a bad policy: refused now
    if spec.kind == "command":
        check.validate()
    return spec


def _tuple(values) -> tuple | None:
    return None if values is None else tuple(values)


def data_args(d: DataOptions) -> dict:
    from bisector.commands.candidates import one_sample_source
    from bisector.data import parse_val_range
    from bisector.model.shapes import parse_shapes

    if d.samples < 1:
        raise UserError(f"--samples/--iterations must be at least 1, not {d.samples}")
    if d.seed < 0:
        raise UserError(f"--seed must be 0 or more, not {d.seed}")
    one_sample_source(d.load_inputs, d.data_loader_script)  # before a session is opened
    return {"shapes": parse_shapes(d.input_shapes), "load": [p.absolute() for p in d.load_inputs or []],
            "samples": d.samples, "seed": d.seed,
            "val_range": parse_val_range(d.val_range) if d.val_range else None, "script": _script(d.data_loader_script),
            "data_dir": d.external_data_dir.absolute() if d.external_data_dir else None}


def _script(spec: str | None) -> str | None:
    """``path.py[:function]`` with the path made absolute."""
    if not spec:
        return spec
    path, colon, func = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    return str(Path(path).absolute()) + (colon + func if colon else "")


def candidate_fields(d: DataOptions, s: SessionOptions, cmp: CompareOptions, artifact: str) -> dict:
    """The ``CandidateOptions`` fields (bisector/commands/candidates.py) that the shared flags set."""
    a = data_args(d)
    name = s.iter_artifact or artifact
    if name in ("", ".", "..") or Path(name).name != name:
        raise UserError(f"--iter-artifact {name!r} must be a plain file name: candidates are written in their "
                        f"iteration directory", hint="e.g. --iter-artifact polygraphy_debug.onnx")
    return {"input_shapes": a["shapes"], "load_inputs": a["load"], "data_loader_script": a["script"],
            "external_data_dir": a["data_dir"], "seed": a["seed"], "val_range": a["val_range"],
            "samples": a["samples"], "iter_artifact": name, "write_inputs": not cmp.compare,
            "save_inputs": d.save_inputs.absolute() if d.save_inputs else None}


def run_options(s: SessionOptions) -> RunOptions:
    from bisector.commands.candidates import check_writable

    check_writable(s.events)
    devices = tuple(d.strip() for d in s.devices.split(",") if d.strip()) if s.devices else ()
    opts = RunOptions(session=s.session.absolute() if s.session else None, jobs=s.jobs, devices=devices,
                      artifacts=tuple(s.artifacts or ()), art_dir=s.art_dir.absolute() if s.art_dir else None,
                      iter_info=s.iter_info, keep_intermediate=s.no_remove_intermediate, force_output=s.force_output,
                      load_debug_replay=s.load_debug_replay.absolute() if s.load_debug_replay else None,
                      executor=s.executor, ray_address=s.ray_address, gpus_per_check=s.gpus_per_check,
                      ray_files=s.ray_files)
    opts.validate()
    return opts


def display(s: SessionOptions) -> Display:
    return Display(quiet=s.quiet, json=s.json, events=s.events.absolute() if s.events else None)


def blind_check_warnings(check_argv: list[str] | None, artifact: str, model: Path) -> list[str]:
    """A check command that names neither the candidate nor ``{artifact}`` / ``$BISECTOR_ARTIFACT``
    most likely checks the same file every time (often the input model itself): every verdict is
    then the same, and the search ends on a confident but meaningless answer. Said before it runs."""
    from bisector.commands.candidates import INPUTS_NAME

    if not check_argv:
        return []
    out = []
    for flag, value in zip(check_argv, check_argv[1:]):
        if flag in ("--load-inputs", "--load-input-data") and value not in (INPUTS_NAME, "{inputs}") \
                and "BISECTOR_INPUTS" not in value:
            out.append(f"the check loads {value}, not the {INPUTS_NAME} bisector writes beside each candidate: a "
                       f"candidate cut inside the model has other inputs, which only {INPUTS_NAME} ({{inputs}}) holds")
    text = " ".join(check_argv)
    if artifact in text or "{artifact}" in text or "BISECTOR_ARTIFACT" in text:
        return out
    names_model = any(Path(a).name == Path(model).name for a in check_argv)
    what = f"names the input model {Path(model).name}, not the candidate" if names_model else \
        f"does not name the candidate ({artifact}, {{artifact}} or $BISECTOR_ARTIFACT)"
    out.append(f"the check command {what}: unless it reads {artifact} from its working directory by itself, every "
               f"check sees the same model and the answer means nothing")
    return out
