"""Layer by layer: every marked tensor of a target run against the reference's, in topological order,
read as a diagnosis (``bisector compare MODEL --outputs mark all``).

Each tensor is compared with the comparator's rules (``comparator.compare_outputs``: ``--atol``,
``--rtol``, ``--check-error-stat``, ``--validate``, per tensor name too) and gets a scale-free error,
its *relative L2 error* ``||t - r|| / ||r||`` over the elements where the reference is finite (inf
where the target is not finite there). From the rows, in topological order, the report reads:

- the **first tensor out of tolerance** (Polygraphy's ``--fail-fast`` answer);
- the **first non-finite tensor**: the first where the target has inf/NaN and the reference does
  not (an fp16 overflow shows here);
- the **largest own error**: the node whose output is worst *of its own making*. When the node was
  run alone on the reference's exact inputs (``own_error``, measured by the command), that error is
  its own; otherwise the *jump* stands in: ``(e_out + NOISE) / (max e_in + NOISE)``, the growth of the
  relative error across the node. Accumulated error points downstream of a culprit, since error
  grows or stays after it; the own error points at the culprit;
- a **sparkline** of the relative error along the graph (a log scale; ``!`` non-finite).

Everything here is pure (numpy and the comparator): the command (``commands/compare_layers``) runs
the models, ``render.render_layers`` draws the table.

>>> sparkline([0.0, 1e-6, 1e-3, 1.0, float("inf")])
'_▁▅█!'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bisector.compare.comparator import compare_outputs
from bisector.compare.config import CompareConfig
from bisector.compare.results import OutputComparison, _Json, short_number

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
SPARK_EXACT, SPARK_NONFINITE, SPARK_UNCOMPARED = "_", "!", " "
SPARK_DECADES = (2, 8)  # decades of relative error the sparkline spans at least, at most
SPARK_WIDTH = 80  # characters at most; longer graphs are binned (each bin shows its worst tensor)
NOISE = 1e-6  # relative error added to both sides of the jump ratio: fp32 noise is no jump
TOP_NODES = 5  # nodes listed under "largest own error"
TABLE_ROWS = 60  # rows shown before the table elides the unremarkable ones
CONTEXT_ROWS = 2  # rows kept around each remarkable one when eliding


@dataclass
class Marked:
    """A marked tensor: its topological position, its producing node and the marked tensors that
    node reads."""

    position: int
    tensor: str
    node: str
    op_type: str
    inputs: list[str] = field(default_factory=list)


@dataclass
class TensorError(_Json):
    """One tensor's comparison: ``comparison`` is the worst sample's (``sample``); ``passed`` holds
    for every sample. ``rel_l2`` and ``new_nonfinite`` are the worst over samples. ``own_error``:
    the node's error run alone on the reference's inputs (None: not measured); ``jump``: the ratio
    stand-in (see the module docstring)."""

    position: int
    tensor: str
    node: str
    op_type: str
    inputs: list[str]
    passed: bool
    sample: int
    comparison: OutputComparison
    rel_l2: float
    new_nonfinite: int
    own_error: float | None = None
    jump: float | None = None

    @property
    def stat_value(self) -> float | None:
        return self.comparison.abs_stats.get(self.comparison.stat_key)


@dataclass
class LayerReport(_Json):
    """The diagnosis: ``rows`` in topological order (up to ``stopped_at`` with fail-fast, of
    ``marked`` tensors), the first failing and first non-finite tensor, the nodes ranked by own
    error (``ranking``: ``{"node", "op_type", "tensor", "error"}``, ``ranked_by`` ``"own error"``
    or ``"jump"``), and ``marking``: what marking every tensor changed, if it was checked
    (``reduce_next``: the plain model's outputs fail while the marked run's pass)."""

    rows: list[TensorError]
    passed: bool
    marked: int
    first_failing: str | None = None
    first_nonfinite: str | None = None
    ranking: list[dict] = field(default_factory=list)
    ranked_by: str = "jump"
    stopped_at: str | None = None
    marking: str | None = None
    reduce_next: bool = False  # the plain model fails where the marked one passes: reduce it

    def row(self, tensor: str) -> TensorError:
        return next(r for r in self.rows if r.tensor == tensor)

    @property
    def suspect(self) -> str | None:
        """The node to look at first: the producer of the first non-finite tensor, else the top of
        the own-error ranking when it is out of tolerance, else the first failing tensor's node."""
        return self._suspect()[0]

    def _suspect(self) -> tuple[str | None, list[str]]:
        """The suspect and the reasons for it."""
        failing = {r.node for r in self.rows if not r.passed}
        top = self.ranking[0] if self.ranking and self.ranking[0]["node"] in failing else None
        first = self.row(self.first_failing) if self.first_failing else None
        node = (self.row(self.first_nonfinite).node if self.first_nonfinite else
                top["node"] if top else first.node if first else None)
        if node is None:
            return None, []
        why = []
        if self.first_nonfinite and self.row(self.first_nonfinite).node == node:
            why.append(f"it writes the first non-finite tensor ({self.first_nonfinite})")
        if top and top["node"] == node:
            why.append(f"its {self.ranked_by} is the largest ({short_number(top['error'])})")
        if first and first.node == node:
            why.append(f"it writes the first tensor out of tolerance ({first.tensor})")
        return node, why

    def sparkline(self) -> str:
        return sparkline([r.rel_l2 for r in self.rows])

    def summary(self) -> str:
        """One line: ``FAIL 31/47 tensor(s) out of tolerance, first matmul1_out (matmul1)``."""
        if self.passed:
            return f"PASS {len(self.rows)} tensor(s) within tolerance"
        failed = sum(1 for r in self.rows if not r.passed)
        first = self.row(self.first_failing)
        stop = f"; --fail-fast stopped there ({len(self.rows)}/{self.marked} compared)" if self.stopped_at else ""
        return f"FAIL {failed}/{len(self.rows)} tensor(s) out of tolerance, first {first.tensor} ({first.node}){stop}"

    def diagnosis(self) -> list[str]:
        """The lines that read like a diagnosis (plain text, most telling first)."""
        lines = []
        suspect, why = self._suspect()
        if suspect:
            op = next(r.op_type for r in self.rows if r.node == suspect)
            lines.append(f"suspect: {suspect} ({op}): {'; '.join(why)}")
        if self.first_nonfinite:
            r = self.row(self.first_nonfinite)
            lines.append(f"first non-finite tensor: {r.tensor} ({r.op_type} {r.node}), {r.new_nonfinite} inf/NaN "
                         f"element(s) where the reference is finite")
        if self.ranking:
            top = self.ranking[0]
            how = "run alone on the reference's inputs" if self.ranked_by == "own error" else "growth across the node"
            others = ", ".join(f"{e['node']} {short_number(e['error'])}" for e in self.ranking[1:])
            lines.append(f"largest {self.ranked_by}: {top['node']} ({top['op_type']}) {short_number(top['error'])} "
                         f"({how})" + (f"; then {others}" if others else ""))
        if self.first_failing:
            r = self.row(self.first_failing)
            lines.append(f"first tensor out of tolerance: {r.tensor} ({r.op_type} {r.node}): {r.comparison.reason}")
        lines.append(f"relative error along the graph: |{self.sparkline()}|")
        if self.marking:
            lines.append(self.marking)
        return lines


# ---------------------------------------------------------------- per tensor
def relative_error(target: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """``(||t - r|| / ||r||, new non-finite)`` over the elements where the reference is finite;
    inf when the target is inf/NaN at any of them. Shapes that differ: ``(inf, 0)``.

    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    (0.7071067811865475, 0)
    """
    t, r = np.asarray(target), np.asarray(reference)
    if t.shape != r.shape or t.dtype.kind not in "biuf" or r.dtype.kind not in "biuf":
        return (math.inf, 0) if t.shape != r.shape else (0.0 if np.array_equal(t, r) else math.inf, 0)
    t, r = t.astype(np.float64, copy=False), r.astype(np.float64, copy=False)
    ok = np.isfinite(r)
    bad = int((ok & ~np.isfinite(t)).sum())
    if bad:
        return math.inf, bad
    diff = float(np.linalg.norm(t[ok] - r[ok]))
    norm = float(np.linalg.norm(r[ok]))
    return (diff / norm if norm else (0.0 if diff == 0 else math.inf)), 0


def tensor_error(marked: Marked, targets: Sequence[np.ndarray], references: Sequence[np.ndarray],
                 config: CompareConfig) -> TensorError:
    """Compare one tensor over every sample; keep the worst sample's comparison."""
    worst: tuple | None = None
    passed, rel, nonfinite = True, 0.0, 0
    for s, (t, r) in enumerate(zip(targets, references, strict=True)):
        c = compare_outputs({marked.tensor: t}, {marked.tensor: r}, config, sample=s).outputs[0]
        e, bad = relative_error(t, r)
        passed, rel, nonfinite = passed and c.passed, max(rel, e), max(nonfinite, bad)
        key = (not c.passed, e)
        if worst is None or key > worst[0]:
            worst = (key, s, c)
    assert worst is not None, "no sample"
    return TensorError(marked.position, marked.tensor, marked.node, marked.op_type, list(marked.inputs), passed,
                       worst[1], worst[2], rel, nonfinite)


# ---------------------------------------------------------------- the diagnosis
def jump(error: float, inherited: float) -> float:
    """How much a node grows the relative error: ``(error + NOISE) / (inherited + NOISE)``; inf for a
    node that makes inf/NaN from finite inputs, 1 when both are inf.

    >>> jump(1.0, 0.0) > 1e5, jump(1e-3, 1e-3), jump(math.inf, math.inf)
    (True, 1.0, 1.0)
    """
    if math.isinf(error):
        return 1.0 if math.isinf(inherited) else math.inf
    return (error + NOISE) / (inherited + NOISE)


def _rank_key(error: float) -> float:
    return math.inf if math.isnan(error) else error


def rank_nodes(rows: Sequence[TensorError], measured: bool, top: int = TOP_NODES) -> list[dict]:
    """Nodes by their own error (``own_error`` if ``measured``, else ``jump``), largest first,
    topological order among ties; a node with several outputs counts its worst. Nodes that add
    nothing (an own error of 0, a jump of at most 1) are left out."""
    best: dict[str, dict] = {}
    for r in rows:
        value = r.own_error if measured else r.jump
        if value is None:
            continue
        old = best.get(r.node)
        if old is None or _rank_key(value) > _rank_key(old["error"]):
            best[r.node] = {"node": r.node, "op_type": r.op_type, "tensor": r.tensor, "error": value,
                            "position": r.position}
    ranked = sorted(best.values(), key=lambda e: (-_rank_key(e["error"]), e["position"]))
    floor = 0.0 if measured else 1.0  # a jump of 1 carries the error on: it grows nothing
    return [{k: v for k, v in e.items() if k != "position"} for e in ranked if e["error"] > floor][:top]


def diagnose(rows: list[TensorError], marked: int, own_errors: Mapping[str, float] | None = None,
             stopped_at: str | None = None, marking: str | None = None) -> LayerReport:
    """The report from the compared rows (topological order). ``own_errors``: each node's measured
    error run alone on the reference's inputs (by node); without it the jump ranks the nodes."""
    errors = {r.tensor: r.rel_l2 for r in rows}
    for r in rows:
        r.jump = jump(r.rel_l2, max((errors[i] for i in r.inputs if i in errors), default=0.0))
        if own_errors is not None and r.node in own_errors:
            r.own_error = own_errors[r.node]
    measured = bool(own_errors)
    first_failing = next((r.tensor for r in rows if not r.passed), None)
    first_nonfinite = next((r.tensor for r in rows if r.new_nonfinite), None)
    return LayerReport(rows, first_failing is None, marked, first_failing, first_nonfinite,
                       rank_nodes(rows, measured), "own error" if measured else "jump", stopped_at, marking)


def marking_note(marked_passed: bool, unmarked_passed: bool, provider: str) -> str | None:
    """What marking every tensor as an output changed on the target (None: nothing)."""
    if marked_passed == unmarked_passed:
        return None
    if marked_passed:
        return (f"the graph outputs pass with every tensor marked but fail without: marking changed how {provider} "
                f"computes the model (fusion), so the per-tensor table does not show the failure")
    return (f"the graph outputs fail with every tensor marked but pass without: marking changed how {provider} "
            f"computes the model, and the per-tensor table shows a failure the plain model does not have")


# ---------------------------------------------------------------- text
def sparkline(values: Sequence[float | None], width: int = SPARK_WIDTH) -> str:
    """One character per value (per bin of values beyond ``width``, the bin's worst): a log scale
    from the smallest to the largest finite value, spanning ``SPARK_DECADES`` (at least, at most);
    ``_`` exact, ``!`` inf/NaN, a space for None."""
    if len(values) > width:
        size = math.ceil(len(values) / width)
        values = [_worst(values[i:i + size]) for i in range(0, len(values), size)]
    finite = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    hi = max(finite, default=0.0)
    lo = max(min(min(finite, default=hi), hi - SPARK_DECADES[0]), hi - SPARK_DECADES[1])
    out = []
    for v in values:
        if v is None:
            out.append(SPARK_UNCOMPARED)
        elif not math.isfinite(v):
            out.append(SPARK_NONFINITE)
        elif v <= 0:
            out.append(SPARK_EXACT)
        else:
            level = (math.log10(v) - lo) / (hi - lo) * (len(SPARK_LEVELS) - 1)
            out.append(SPARK_LEVELS[min(len(SPARK_LEVELS) - 1, max(0, round(level)))])
    return "".join(out)


def _worst(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return next((v for v in present if not math.isfinite(v)), max(present))


def shown_rows(report: LayerReport, limit: int = TABLE_ROWS) -> list[int | None]:
    """Row indices for the table: all of them up to ``limit``; beyond, the failing and non-finite
    boundaries, the ranked nodes and the last row, with ``CONTEXT_ROWS`` around each (None marks
    an elided run)."""
    n = len(report.rows)
    if n <= limit:
        return list(range(n))
    keys = {report.first_failing, report.first_nonfinite} | {e["tensor"] for e in report.ranking}
    picked = {i for i, r in enumerate(report.rows) if r.tensor in keys} | {0, n - 1}
    wanted = sorted({j for i in picked for j in range(i - CONTEXT_ROWS, i + CONTEXT_ROWS + 1) if 0 <= j < n})
    out: list[int | None] = []
    for i in wanted:
        if out and out[-1] is not None and i != out[-1] + 1:
            out.append(None)
        out.append(i)
    return out
