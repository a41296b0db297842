"""What ``reduce`` and ``precision`` share: the options that say where a candidate's data, name and
weights come from, and the input samples every candidate is run on.

Example::

    opts = ReduceOptions(model=Path("model.onnx"), load_inputs=[Path("inputs.json")])
    prepared, samples = prepare_candidates(opts, root)
"""

from __future__ import annotations

import functools
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
from bisector.model.shapes import shapes_from_samples

DEFAULT_ARTIFACT = "polygraphy_debug.onnx"  # Polygraphy's name: its users' checks already say it
INPUTS_NAME = "inputs.json"  # beside the artifact; {inputs} and $BISECTOR_INPUTS name it
WEIGHT_MODES = ("auto", "link", "embed")
DATA_LOADER_FUNCTION = "load_data"  # what --data-loader-script calls unless told (Polygraphy's default)


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
    weights: str = "auto"  # link | embed | auto (see weights_embedded)

    def data_params(self) -> dict[str, Any]:
        """The part of a search's params (compared on resume) that these fields make."""
        return {"input_shapes": self.input_shapes, "load_inputs": [str(p) for p in self.load_inputs],
                "data_loader_script": self.data_loader_script,
                "external_data_dir": str(self.external_data_dir) if self.external_data_dir else None,
                "seed": self.seed, "samples": self.samples, "val_range": self.val_range,
                "iter_artifact": self.iter_artifact, "weights": self.weights}


def prepare_candidates(opts: CandidateOptions, root: Path) -> tuple[Prepared, list[dict[str, np.ndarray]]]:
    """The prepared model (weights in ``root/weights``) and the samples every candidate runs on.

    Loaded samples are read once: their first sample freezes the input shapes unless
    ``--input-shapes`` does, and all of them are checked against the model (:func:`model_samples`).
    """
    loaded = loaded_samples(opts.load_inputs, opts.data_loader_script)
    source = sample_source(opts.data_loader_script)
    if opts.input_shapes or not loaded:
        shapes, shapes_source = dict(opts.input_shapes), "--input-shapes"
    else:
        shapes, shapes_source = shapes_from_samples(loaded[:1]), source
    prepared = prepare(opts.model, shapes=shapes, shapes_source=shapes_source, data_dir=opts.external_data_dir,
                       weights_dir=Path(root) / "weights")
    return prepared, model_samples(prepared.model, loaded, source, opts.samples, opts.seed, opts.val_range)


def sample_source(script: str | None) -> str:
    """The flag loaded samples come from, for messages."""
    return "--data-loader-script" if script else "--load-inputs"


def one_sample_source(load: list[Path] | None, script: str | None) -> None:
    """UserError if both ``--load-inputs`` and ``--data-loader-script`` are given."""
    if script and load:
        raise UserError("--load-inputs and --data-loader-script both give the input data: choose one")


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
                  samples: int = 1, seed: int = 1, val_range=None) -> list[dict[str, np.ndarray]]:
    """The ``loaded`` samples (from :func:`loaded_samples`; ``source`` is their flag), checked
    against the model's inputs (names and dtypes), or, if None, ``samples`` generated ones
    (``--seed``, ``--val-range``)."""
    specs = default_specs(model)
    if loaded is None:
        return generate_inputs(specs, samples=samples, seed=seed, val_range=val_range)
    for s in loaded:
        unknown = set(s) - set(specs)
        if unknown:
            raise UserError(f"{source} has data for {', '.join(sorted(unknown))}, which the model has no input "
                            f"named", hint=f"the model's inputs are {', '.join(sorted(specs)) or 'none'}")
        for name, arr in s.items():
            dtype = np.asarray(arr).dtype
            if dtype != specs[name][0]:
                raise UserError(f"{source} gives {name!r} as {dtype}, the model wants {specs[name][0]}")
    return loaded


@functools.lru_cache(maxsize=4)
def _script_samples(spec: str) -> tuple[dict[str, np.ndarray], ...]:
    path, _, func = spec.partition(":")
    func = func or DATA_LOADER_FUNCTION
    if not Path(path).is_file():
        raise UserError(f"--data-loader-script {path}: no such file")
    here = str(Path(path).resolve().parent)
    sys.path.insert(0, here)  # the script may import modules beside it, as Polygraphy allows
    try:
        try:
            namespace = runpy.run_path(path)
        except Exception as exc:
            raise UserError(f"--data-loader-script {path} raised {type(exc).__name__}: {exc}") from None
        if not callable(namespace.get(func)):
            raise UserError(f"--data-loader-script {path} defines no function {func!r}",
                            hint="name another one with path.py:function")
        out = []
        try:
            for i, sample in enumerate(namespace[func]()):
                if not isinstance(sample, Mapping):
                    raise UserError(f"--data-loader-script {spec}: sample {i} is a {type(sample).__name__}, "
                                    f"not a dict of input name to array")
                out.append({str(k): np.asarray(v) for k, v in sample.items()})
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"--data-loader-script {spec} raised {type(exc).__name__}: {exc}") from None
    finally:
        if here in sys.path:
            sys.path.remove(here)
    if not out:
        raise UserError(f"--data-loader-script {spec} yielded no samples")
    return tuple(out)


def script_samples(spec: str) -> list[dict[str, np.ndarray]]:
    """The samples that Polygraphy's ``--data-loader-script path.py[:function]`` yields (the
    function takes no argument; ``load_data`` by default). Run once per process."""
    return [dict(s) for s in _script_samples(spec)]


def weights_embedded(mode: str, prepared: Prepared, command_check: bool = True) -> bool:
    """Whether candidates carry a copy of the weights they use, rather than a link to the session's
    weight file.

    ``auto`` links for the in-process compare check (onnxruntime reads hard-linked weights: bytes
    per iteration stay independent of the weights) and for weights of 64 MiB and more. Below that,
    candidates handed to a command check embed their weights, because ``onnx.load`` refuses
    hard-linked external data ("potential hardlink attack") and a check that calls it, directly or
    through a tool, would fail every candidate for that reason alone.
    """
    one_of("--weights", mode, WEIGHT_MODES)
    if mode == "auto":
        return command_check and mio.external_bytes(prepared.model) < mio.EMBED_WEIGHTS_BELOW_BYTES
    return mode == "embed"
