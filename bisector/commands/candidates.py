"""What ``reduce`` and ``precision`` share: the options that say where a candidate's data, name and
weights come from, and the input samples every candidate is run on.

Example::

    opts = ReduceOptions(model=Path("model.onnx"), load_inputs=[Path("inputs.json")])
    prepared = prepare(opts.model, shapes=frozen_shapes(opts), weights_dir=root / "weights")
    samples = input_samples(prepared, opts)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bisector.data import generate_inputs, load_inputs
from bisector.errors import UserError, one_of
from bisector.model import io as mio
from bisector.model.prepare import Prepared, default_specs
from bisector.model.shapes import shapes_from_samples

DEFAULT_ARTIFACT = "polygraphy_debug.onnx"  # Polygraphy's name: its users' checks already say it
INPUTS_NAME = "inputs.json"  # beside the artifact; {inputs} and $BISECTOR_INPUTS name it
WEIGHT_MODES = ("auto", "link", "embed")


@dataclass
class CandidateOptions:
    """The fields a search's candidates are built from, besides what the search itself changes."""

    model: Path
    output: Path | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    load_inputs: list[Path] = field(default_factory=list)
    seed: int = 1
    val_range: dict[str, tuple[float, float]] | None = None
    samples: int = 1
    iter_artifact: str = DEFAULT_ARTIFACT
    write_inputs: bool = True  # command checks need inputs.json; the in-process compare check does not
    weights: str = "auto"  # link | embed | auto (see weights_embedded)

    def data_params(self) -> dict[str, Any]:
        """The part of a search's params (compared on resume) that these fields make."""
        return {"input_shapes": self.input_shapes, "load_inputs": [str(p) for p in self.load_inputs],
                "seed": self.seed, "samples": self.samples, "val_range": self.val_range,
                "iter_artifact": self.iter_artifact, "weights": self.weights}


def frozen_shapes(opts: CandidateOptions) -> dict[str, list[int]]:
    """``--input-shapes``, else the shapes of the first loaded sample, else nothing to freeze."""
    if opts.input_shapes:
        return dict(opts.input_shapes)
    if opts.load_inputs:
        return shapes_from_samples([s for p in opts.load_inputs[:1] for s in load_inputs(p)])
    return {}


def input_samples(prepared: Prepared, opts: CandidateOptions) -> list[dict[str, np.ndarray]]:
    """The samples every candidate of a search runs on: see :func:`model_samples`."""
    return model_samples(prepared.model, opts.load_inputs, opts.samples, opts.seed, opts.val_range)


def model_samples(model: onnx.ModelProto, load: list[Path] | None, samples: int = 1, seed: int = 1,
                  val_range=None) -> list[dict[str, np.ndarray]]:
    """Every sample of the ``--load-inputs`` files (names checked against the model's inputs), or
    ``samples`` generated ones (``--seed``, ``--val-range``)."""
    expected = set(default_specs(model))
    if load:
        data = [s for p in load for s in load_inputs(p)]
        if not data:
            raise UserError(f"{load[0]}: holds no input samples")
        for s in data:
            unknown = set(s) - expected
            if unknown:
                raise UserError(f"--load-inputs has data for {', '.join(sorted(unknown))}, which the model has "
                                f"no input named", hint=f"the model's inputs are {', '.join(sorted(expected)) or 'none'}")
        return data
    return generate_inputs(default_specs(model), samples=samples, seed=seed, val_range=val_range)


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
