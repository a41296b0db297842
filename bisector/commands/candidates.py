"""What ``reduce`` and ``precision`` share: the options that say where a candidate's data, name and
weights come from, and the input samples every candidate is run on.

Example::

    opts = ReduceOptions(model=Path("model.onnx"), load_inputs=[Path("inputs.json")])
    prepared, samples = prepare_candidates(opts, root)
"""

from __future__ import annotations

import functools
import logging
import runpy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bisector.data import generate_inputs, load_inputs
from bisector.errors import UserError, one_of
from bisector.model import io as mio
from bisector.model.prepare import Prepared, default_specs, prepare
from bisector.model.shapes import infer_shapes, shapes_from_samples

DEFAULT_ARTIFACT = "polygraphy_debug.onnx"  # Polygraphy's name: its users' checks already say it
INPUTS_NAME = "inputs.json"  # beside the artifact; {inputs} and $BISECTOR_INPUTS name it
WEIGHT_MODES = ("auto", "link", "embed")
DATA_LOADER_FUNCTION = "load_data"  # what --data-loader-script calls unless told (Polygraphy's default)

log = logging.getLogger(__name__)


@dataclass
class CandidateOptions:
    """The fields a search's candidates are built from, besides what the search itself changes."""

    model: Path
    output: Path | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    load_inputs: list[Path] = field(default_factory=list)
    data_loader_script: str | None = None  # Polygraphy's --data-loader-script path.py[:function]
    external_data_dir: Path | None = None  # Polygraphy's --external-data-dir: the weights, if not beside the model
    seed: int = 1
    val_range: dict[str, tuple[float, float]] | None = None
    samples: int = 1
    iter_artifact: str = DEFAULT_ARTIFACT
    write_inputs: bool = True  # command checks need inputs.json; the in-process compare check does not
    weights: str = "auto"  # link | embed | auto (see candidate_weights)
    save_inputs: Path | None = None  # Polygraphy's --save-inputs: the full model's input samples

    def data_params(self) -> dict[str, Any]:
        """The part of a search's params (compared on resume) that these fields make."""
        return {"input_shapes": self.input_shapes, "load_inputs": [str(p) for p in self.load_inputs],
                "data_loader_script": self.data_loader_script,
                "external_data_dir": str(self.external_data_dir) if self.external_data_dir else None,
                "seed": self.seed, "samples": self.samples, "val_range": self.val_range,
                "iter_artifact": self.iter_artifact, "weights": self.weights}


def check_writable(path: Path | None, model: Path | None = None) -> None:
    """Refuse an output path that cannot be written before the search, not after it: a directory,
    the input ``model`` itself, or a place where no file can be created (tried, in the nearest
    directory that exists, so that nothing is left behind)."""
    import os
    import tempfile

    if path is None:
        return
    target = Path(path).absolute()
    if target.is_dir():
        raise UserError(f"cannot write {path}: it is a directory", hint="give a file name, e.g. reduced.onnx")
    if model is not None and target.exists() and Path(model).exists() and os.path.samefile(target, model):
        raise UserError(f"{path} is the input model: writing the answer there would destroy it",
                        hint="give another -o")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".bisector-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {parent}: {exc.strerror or exc}") from None


def prepare_candidates(opts: CandidateOptions, root: Path,
                       keep_tensors: bool = False) -> tuple[Prepared, list[dict[str, np.ndarray]]]:
    """The prepared model (weights in ``root/weights``) and the samples every candidate runs on.

    Loaded samples are read once: their first sample freezes the input shapes unless
    ``--input-shapes`` does, and all of them are checked against the model (:func:`model_samples`).
    With ``keep_tensors`` (reduce) the samples keep the loaded values of non-input tensors.
    """
    loaded = loaded_samples(opts.load_inputs, opts.data_loader_script)
    source = sample_source(opts.data_loader_script)
    if opts.input_shapes or not loaded:
        shapes, shapes_source = dict(opts.input_shapes), "--input-shapes"
    else:
        shapes, shapes_source = shapes_from_samples(loaded[:1]), source
    prepared = prepare(opts.model, shapes=shapes, shapes_source=shapes_source, data_dir=opts.external_data_dir,
                       weights_dir=Path(root) / "weights")
    return prepared, model_samples(prepared.model, loaded, source, opts.samples, opts.seed, opts.val_range,
                                   files=opts.load_inputs, keep_tensors=keep_tensors, unfolded=opts.model)


def sample_source(script: str | None) -> str:
    """The flag loaded samples come from, for messages."""
    return "--data-loader-script" if script else "--load-inputs"


def one_sample_source(load: list[Path] | None, script: str | None) -> None:
    """UserError if both ``--load-inputs`` and ``--data-loader-script`` are given."""
    if script and load:
        raise UserError("`load_inputs` and `data_loader_script` both give the input data: choose one")


def loaded_samples(load: list[Path] | None, script: str | None) -> list[dict[str, np.ndarray]] | None:
    """The samples of the ``--load-inputs`` files or of ``--data-loader-script``; None for neither."""
    one_sample_source(load, script)
    if script:
        return script_samples(script)
    if load:
        data = [s for p in load for s in load_inputs(p)]
        if not data:
            raise UserError(f"{load[0]}: holds no input samples")
        return data
    return None


def model_samples(model: onnx.ModelProto, loaded: list[dict[str, np.ndarray]] | None, source: str = "--load-inputs",
                  samples: int = 1, seed: int = 1, val_range=None, *, files: list[Path] | None = None,
                  keep_tensors: bool = False, unfolded: Path | None = None) -> list[dict[str, np.ndarray]]:
    """The ``loaded`` samples (from :func:`loaded_samples`; ``source`` is their flag, ``files`` the
    ``--load-inputs`` paths), checked against the model's inputs (every input in every sample, with
    its dtype), or, if None, ``samples`` generated ones (``--seed``, ``--val-range``).

    Loaded samples may also give values of tensors that nodes compute: Polygraphy's layerwise
    inputs (``polygraphy run --onnx-outputs mark all --save-inputs in.json --save-outputs out.json``,
    then ``polygraphy data merge in.json out.json -o layerwise_inputs.json``). With ``keep_tensors``
    (reduce feeds them to cut tensors) they stay, checked against the dtype and the shape that
    shape inference gives where it knows them; otherwise they are dropped with one warning. A name
    that is neither an input nor a tensor of the model is a UserError naming the file. ``unfolded``
    is the model file before constant folding, read (without weights) only to tell a tensor that
    folding removed (its value is dropped) from a name the model never had.
    """
    specs = default_specs(model)
    if loaded is None:
        return generate_inputs(specs, samples=samples, seed=seed, val_range=val_range)
    computed = {o for n in model.graph.node for o in n.output if o}
    others = sorted({name for s in loaded for name in s} - set(specs))
    unknown = [n for n in others if n not in computed]
    if unknown:
        bad = sorted(set(unknown) - _folded_away(model, unfolded))
        if bad:
            path = _file_holding(bad[0], files)
            raise UserError(f"{source} names {bad[0]!r}{f' ({path})' if path else ''}, which is neither an input "
                            f"nor a tensor of the model" + (f" ({len(bad)} such names)" if len(bad) > 1 else ""),
                            hint=f"the model's inputs are {', '.join(sorted(specs)) or 'none'}")
        log.info("%s: %d value(s) of tensors that constant folding removed are not used", source, len(unknown))
    for i, s in enumerate(loaded):
        missing = [name for name in specs if name not in s]
        if missing:
            raise UserError(f"{source} gives no value for input {missing[0]!r} in sample {i}",
                            hint=f"every sample needs the model's inputs: {', '.join(specs)}")
        for name in specs:
            dtype = np.asarray(s[name]).dtype
            if dtype != specs[name][0]:
                raise UserError(f"{source} gives {name!r} as {dtype}, the model wants {specs[name][0]}")
    if not others:
        return loaded
    kept = set(specs) | (computed if keep_tensors else set())
    if keep_tensors:
        _check_tensor_values(model, loaded, computed & set(others), source)
    elif computed & set(others):
        named = sorted(computed & set(others))
        log.warning("%s also gives values of %d non-input tensor(s) (%s%s); only the model's inputs are used",
                    source, len(named), ", ".join(named[:3]), ", ..." if len(named) > 3 else "")
    return [{k: v for k, v in s.items() if k in kept} for s in loaded]


def _folded_away(model: onnx.ModelProto, unfolded: Path | None) -> set[str]:
    """Names that constant folding turned into weights or removed: the prepared model's
    initializers, and the tensors that nodes of the ``unfolded`` model file compute."""
    names = {t.name for t in model.graph.initializer}
    if unfolded is not None and Path(unfolded).is_file():
        graph = onnx.load(str(unfolded), load_external_data=False).graph
        names |= {o for n in graph.node for o in n.output if o}
    return names


def _file_holding(name: str, files: list[Path] | None) -> Path | None:
    """The first of ``files`` with a sample that gives ``name`` (read again: error path only)."""
    for path in files or []:
        if any(name in s for s in load_inputs(path)):
            return path
    return None


def _check_tensor_values(model: onnx.ModelProto, loaded, names: set[str], source: str) -> None:
    """UserError if a loaded value of a computed tensor has another dtype or shape than shape
    inference gives the model (unknown dimensions match anything)."""
    inferred = infer_shapes(model)
    for s in loaded:
        for name in sorted(names & set(s) & set(inferred)):
            value, (dtype, dims) = np.asarray(s[name]), inferred[name]
            if value.dtype != dtype:
                raise UserError(f"{source} gives {name!r} as {value.dtype}, the model computes {dtype}")
            if len(dims) != value.ndim or any(d >= 0 and d != v for d, v in zip(dims, value.shape)):
                shown = [d if d >= 0 else "?" for d in dims]
                raise UserError(f"{source} gives {name!r} shape {list(value.shape)}, the model computes {shown}")


@functools.lru_cache(maxsize=4)
def _script_samples(spec: str) -> tuple[dict[str, np.ndarray], ...]:
    path, _, func = spec.partition(":")
    func = func or DATA_LOADER_FUNCTION
    if not Path(path).is_file():
        raise UserError(f"`data_loader_script` {path}: no such file")
    here = str(Path(path).resolve().parent)
    sys.path.insert(0, here)  # the script may import modules beside it, as Polygraphy allows
    try:
        try:
            namespace = runpy.run_path(path)
        except Exception as exc:
            raise UserError(f"`data_loader_script` {path} raised {type(exc).__name__}: {exc}") from None
        if not callable(namespace.get(func)):
            raise UserError(f"`data_loader_script` {path} defines no function {func!r}",
                            hint="name another one with path.py:function")
        out = []
        try:
            for i, sample in enumerate(namespace[func]()):
                if not isinstance(sample, Mapping):
                    raise UserError(f"`data_loader_script` {spec}: sample {i} is a {type(sample).__name__}, "
                                    f"not a dict of input name to array")
                out.append({str(k): np.asarray(v) for k, v in sample.items()})
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"`data_loader_script` {spec} raised {type(exc).__name__}: {exc}") from None
    finally:
        if here in sys.path:
            sys.path.remove(here)
    if not out:
        raise UserError(f"`data_loader_script` {spec} yielded no samples")
    return tuple(out)


def script_samples(spec: str) -> list[dict[str, np.ndarray]]:
    """The samples that Polygraphy's ``--data-loader-script path.py[:function]`` yields (the
    function takes no argument; ``load_data`` by default). Run once per process."""
    return [dict(s) for s in _script_samples(spec)]


def candidate_weights(mode: str, prepared: Prepared, command_check: bool = True) -> str:
    """How candidates reach the session's weights (``io.save``'s ``weights``) for ``--weights mode``.

    - ``auto``: hard links (``link``, no bytes copied) for the in-process compare check, whose
      onnxruntime reads them. A command check may call ``onnx.load`` (directly or through a tool),
      which refuses a weight file with another hard link ("potential hardlink attack"), so its
      candidates carry their weights: embedded below ``EMBED_WEIGHTS_BELOW_BYTES`` (64 MiB), and
      from there on in their own data file beside them (``file``: only the tensors the candidate
      uses, copied in the kernel; a protobuf cannot hold 2 GB).
    - ``link`` and ``embed`` force either (``link`` is the cheapest; ``onnx.load`` refuses it).
    """
    one_of("--weights", mode, WEIGHT_MODES)
    if mode != "auto":
        return mode
    if not command_check:
        return "link"
    return "embed" if mio.external_bytes(prepared.model) < mio.EMBED_WEIGHTS_BELOW_BYTES else "file"
