"""``bisector reduce``: prepare the model, record activations, search, write the answer.

The materializer turns a node set into ``polygraphy_debug.onnx`` (weights as
``candidates.candidate_weights`` says: linked, embedded, or copied into its own data file)
plus ``inputs.json`` (Polygraphy format, one dict per sample, every graph input of the candidate).
Cut tensors are fed with the values the full model produced for them (``recorded``), or with
seeded random data (``random``), or with the first sample's value for every sample
(``constant``, what Polygraphy does: NVIDIA/TensorRT#4607). Values that ``--load-inputs`` gives for
non-input tensors (Polygraphy's layerwise inputs) take the place of recorded ones: candidates are
fed the file's values, as Polygraphy feeds them, and only the tensors the file lacks are recorded.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bisector.backends.record import ActivationStore, record_activations
from bisector.checks.base import Artifact
from bisector.commands.base import Command, Plan, Report
from bisector.commands.candidates import (INPUTS_NAME, CandidateOptions, candidate_weights, check_writable,
                                          prepare_candidates)
from bisector.data import save_inputs
from bisector.engine import Outcome
from bisector.errors import UserError
from bisector.model import io as mio
from bisector.model.extract import SubgraphCutter
from bisector.model.fingerprint import items_fingerprint
from bisector.model.graph import GraphIndex
from bisector.model.prepare import Prepared
from bisector.strategies.base import Candidate
from bisector.strategies.reduce import ReduceStrategy

log = logging.getLogger(__name__)

CUT_FEEDS = ("recorded", "random", "constant")


@dataclass
class ReduceOptions(CandidateOptions):
    min_good: Path | None = None
    mode: str = "auto"
    reduce_inputs: bool = True
    reduce_outputs: bool = True
    verify_minimal: bool = False
    cut_feed: str = "recorded"

    def params(self) -> dict[str, Any]:
        """What changes the search (compared on resume)."""
        return {"mode": self.mode, "reduce_inputs": self.reduce_inputs, "reduce_outputs": self.reduce_outputs,
                "verify_minimal": self.verify_minimal, "cut_feed": self.cut_feed, **self.data_params()}


class ReduceMaterializer:
    """Node set -> candidate model + feeds + recorded reference outputs."""

    def __init__(self, prepared: Prepared, store: ActivationStore, opts: ReduceOptions):
        self.prepared = prepared
        self.store = store
        self.opts = opts
        types = {name: store.spec(name) for name in store.files}
        self.cutter = SubgraphCutter(prepared.model, types)
        self.names = self.cutter.index.names
        self.weights = candidate_weights(opts.weights, prepared, command_check=opts.write_inputs)
        self.linked_bytes = mio.external_bytes(prepared.model)

    def fingerprint(self, candidate: Candidate) -> str:
        return items_fingerprint("reduce", candidate.items, self.opts.cut_feed)

    def feeds(self, inputs: list[str]) -> list[dict[str, np.ndarray]]:
        graph_inputs = set(self.cutter.index.graph_inputs)
        samples = []
        for s in range(self.store.samples):
            feed = {}
            for name in inputs:
                if name in graph_inputs or self.opts.cut_feed == "recorded":
                    feed[name] = self.store.get(name, s)
                elif self.opts.cut_feed == "constant":
                    feed[name] = self.store.get(name, 0)
                else:
                    feed[name] = _random_like(self.store.get(name, 0), name, s, self.opts.seed)
            samples.append(feed)
        return samples

    def reference(self, outputs: list[str]) -> list[dict[str, np.ndarray]]:
        return [{name: self.store.get(name, s) for name in outputs} for s in range(self.store.samples)]

    def materialize(self, candidate: Candidate, workdir: Path, iteration: int) -> Artifact:
        sub = self.cutter.cut(candidate.items)
        path = mio.save(sub.model, workdir / self.opts.iter_artifact, weights_from=self.prepared.weights_dir,
                        weights=self.weights)
        feeds = self.feeds(sub.inputs)
        inputs_path = save_inputs(feeds, workdir / INPUTS_NAME) if self.opts.write_inputs else None
        return Artifact(workdir=workdir, path=path, iteration=iteration, inputs_path=inputs_path,
                        model=sub.model, feeds=feeds, reference=self.reference(sub.outputs),
                        weights_dir=self.prepared.weights_dir, description=f"{candidate.label} [{candidate.phase}]")


def _random_like(value: np.ndarray, name: str, sample: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, sample, zlib.crc32(name.encode())])
    if value.dtype.kind == "f":
        return rng.random(value.shape).astype(value.dtype)
    if value.dtype.kind in "iu":
        return np.asarray(value).copy()  # integer tensors are shapes and indices: keep them valid
    return np.asarray(value).copy()


def setup(opts: ReduceOptions, session_root: Path) -> tuple[Prepared, ReduceStrategy, ReduceMaterializer]:
    """Everything before the search; cheap on resume (the recording is reused)."""
    prepared, loaded = prepare_candidates(opts, session_root, keep_tensors=True)
    index = GraphIndex(prepared.model)
    inputs = set(index.graph_inputs)
    samples = [{k: v for k, v in s.items() if k in inputs} for s in loaded]
    given = [{k: v for k, v in s.items() if k not in inputs} for s in loaded]
    store = record_activations(prepared.model, prepared.weights_dir, samples, session_root / "activations",
                               given=given)
    if len(index) == 0:
        raise UserError(f"{opts.model}: the model has no nodes to reduce")
    preds = [frozenset(index.producer[t] for t in ins if t in index.producer) for ins in index.inputs]
    strategy = ReduceStrategy(len(index), preds, mode=opts.mode, reduce_inputs=opts.reduce_inputs,
                              reduce_outputs=opts.reduce_outputs, verify_minimal=opts.verify_minimal,
                              names=index.names)
    return prepared, strategy, ReduceMaterializer(prepared, store, opts)


def write_result(outcome: Outcome, materializer: ReduceMaterializer, opts: ReduceOptions,
                 result_dir: Path, publish: bool = True) -> dict[str, Any]:
    """reduced.onnx + its inputs (standalone), the min-good model, and the culprit table, in
    ``result_dir``; and with ``publish`` (an answer that can be trusted) at ``-o``/``--min-good``."""
    res = outcome.result
    prepared = materializer.prepared
    sub = materializer.cutter.cut(res["nodes"])
    out = {"reduced": str(mio.save_standalone(sub.model, result_dir / "reduced.onnx", prepared.weights_dir))}
    out["reduced_inputs"] = str(save_inputs(materializer.feeds(sub.inputs), result_dir / "reduced_inputs.json"))
    if opts.output and publish:
        out["output"] = str(mio.save_standalone(sub.model, opts.output, prepared.weights_dir).absolute())
        save_inputs(materializer.feeds(sub.inputs), _inputs_beside(opts.output))
    if res.get("min_good") is not None:
        good = materializer.cutter.cut(res["min_good"])
        out["min_good"] = str(mio.save_standalone(good.model, result_dir / "min_good.onnx", prepared.weights_dir))
        out["min_good_inputs"] = str(save_inputs(materializer.feeds(good.inputs), result_dir / "min_good_inputs.json"))
        if opts.min_good and publish:
            mio.save_standalone(good.model, opts.min_good, prepared.weights_dir)
            save_inputs(materializer.feeds(good.inputs), _inputs_beside(opts.min_good))
    idx = materializer.cutter.index
    out["culprits"] = [{"name": idx.names[i], "op_type": idx.ops[i], "inputs": idx.inputs[i],
                        "outputs": idx.outputs[i]} for i in res["nodes"]]
    out["graph_inputs"] = sub.inputs
    out["graph_outputs"] = sub.outputs
    return out


def _inputs_beside(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + "_inputs.json")


class ReduceCommand(Command):
    """``bisector reduce``: the smallest subgraph of the model that still fails the check."""

    name = "reduce"
    options_type = ReduceOptions
    OUTPUT_FIELDS = ("output", "min_good", "save_inputs")

    def params(self) -> dict[str, Any]:
        return self.options.params()

    def check_outputs(self) -> None:
        o = self.options
        if o.output is None and o.min_good is None:
            raise UserError("reduce needs an output (-o) or a min-good path to know where to write the answer")
        if o.output is not None and o.min_good is not None and Path(o.output).absolute() == Path(o.min_good).absolute():
            raise UserError("-o and `min_good` name the same file: the answer and the passing model would overwrite "
                            "each other")
        for path in (o.output, o.min_good, o.save_inputs):
            check_writable(path, o.model)

    def setup(self, session) -> Plan:
        from bisector.commands.reduce_report import count

        o = self.options
        _, strategy, materializer = setup(o, session.root)
        store = materializer.store
        intro = [f"model: {Path(o.model).absolute()} ({count(strategy.n, 'node')} after preparation), "
                 f"{store.samples} input sample(s), cut tensors fed {o.cut_feed} values"]
        notes = []
        if store.given and o.cut_feed != "random":
            notes.append(f"{len(store.given)} cut tensors are fed the values the loaded data gives, not recorded "
                         f"ones; {len(store.recorded) or 'nothing'} recorded")
        if o.write_inputs and materializer.weights == "link" and materializer.linked_bytes:
            notes.append(f"candidates link the session's weight file ({materializer.linked_bytes / 2**20:.0f} MiB) "
                         f"instead of copying it; onnx.load refuses linked weights, so a check that calls it needs "
                         f"--weights auto")
        return Plan(strategy, materializer, tuple(intro), tuple(notes), state=materializer)

    def finish(self, plan: Plan, outcome: Outcome, session, check, force_output: bool = False) -> Report:
        from bisector.commands.reduce_report import reduce_doubt, reduce_report

        o, m = self.options, plan.state
        doubt = reduce_doubt(session, outcome.result)
        written = write_result(outcome, m, o, session.result_dir, publish=not doubt or force_output)
        if o.save_inputs:
            save_inputs(m.feeds(list(m.cutter.index.graph_inputs)), o.save_inputs)
        return reduce_report(session, outcome, written, o, check, doubt)
