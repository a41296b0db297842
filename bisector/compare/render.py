"""Rich rendering of comparison results (rich is imported only when a function is called).

``render_comparison`` takes an ``OutputComparison``, a ``Comparison`` (one sample) or a
``SamplesComparison`` and returns a renderable: one panel per output, green when it passed and
red when it failed, holding the error statistics next to their tolerances, the minimum tolerance
that would pass, a decade histogram of absolute error and the elements furthest out of tolerance.
When something failed, only failures get a panel: passing outputs and samples take one line each.
When everything passed, every output of sample 0 gets its panel.

``render_layers`` draws a layer-by-layer report (``compare.layers.LayerReport``): one row per tensor
in topological order, then its diagnosis.

>>> from rich.console import Console
>>> Console().print(render_comparison(compare_outputs(target, reference)))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bisector.compare.results import Comparison, OutputComparison, SamplesComparison

if TYPE_CHECKING:
    from bisector.compare.layers import LayerReport
    from rich.console import RenderableType
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

BAR_WIDTH = 30  # characters of the longest histogram bar
STAT_ROWS = ("max", "mean", "median", "quantile")
PASS_STYLE, FAIL_STYLE, DIM_STYLE = "bold green", "bold red", "dim"


def render_comparison(comparison: Comparison | SamplesComparison | OutputComparison) -> RenderableType:
    """A rich renderable for a comparison result (see the module docstring)."""
    from rich.console import Group
    if isinstance(comparison, OutputComparison):
        return render_output(comparison)
    if isinstance(comparison, SamplesComparison):
        return _render_samples(comparison)
    return Group(_verdict_line(comparison.passed, comparison.summary()), *_outputs(comparison))


def _outputs(comparison: Comparison) -> list[RenderableType]:
    """Every output in full when all passed; otherwise failing ones in full, passing ones in a line."""
    if comparison.passed:
        return [render_output(o) for o in comparison.outputs]
    return [render_output(o) if not o.passed else _verdict_line(True, f"PASS {o.summary()}")
            for o in comparison.outputs]


def _render_samples(comparison: SamplesComparison) -> RenderableType:
    from rich.console import Group
    from rich.text import Text
    parts: list[RenderableType] = [_verdict_line(comparison.passed, comparison.summary())]
    for sample in comparison.samples:
        if not sample.passed:
            parts.append(Text(f"sample {sample.sample}", "bold"))
            parts.extend(_outputs(sample))
        elif not comparison.passed:
            parts.append(Text(f"  sample {sample.sample}: all {len(sample.outputs)} output(s) passed", DIM_STYLE))
    if comparison.passed and comparison.samples:
        parts.extend(render_output(o) for o in comparison.samples[0].outputs)
    return Group(*parts)


def _verdict_line(passed: bool, text: str) -> Text:
    from rich.text import Text
    label, rest = text.split(" ", 1) if text.startswith(("PASS", "FAIL")) else ("", text)
    line = Text()
    line.append(label or ("PASS" if passed else "FAIL"), PASS_STYLE if passed else FAIL_STYLE)
    return line.append(" " + rest)


def render_output(out: OutputComparison) -> Panel:
    """One output's panel: header, statistics table, histogram and worst elements."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text
    style = "green" if out.passed else "red"
    title = Text.assemble((("PASS " if out.passed else "FAIL "), f"bold {style}"), (out.name, "bold"))
    body: list[RenderableType] = [_header(out)]
    if out.reason:
        body.append(Text(out.reason, style))
    if out.abs_stats:
        body.append(_stats_table(out))
        if out.histogram or out.abs_nan:
            body.append(_histogram(out))
        if out.worst:
            body.append(_worst_table(out))
    return Panel(Group(*body), title=title, title_align="left", border_style=style, expand=False)


def _num(x: float | int | bool | str | None) -> str:
    if x is None:
        return "-"
    if not isinstance(x, float) or not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _header(out: OutputComparison) -> Text:
    from rich.text import Text
    def side(shape, dtype):
        return "missing" if shape is None else f"{dtype}{list(shape)}"

    text = Text(f"target {side(out.target_shape, out.target_dtype)}  "
                f"reference {side(out.reference_shape, out.reference_dtype)}  ", DIM_STYLE)
    text.append(f"check {out.stat}" + (f" (q={out.quantile:g})" if out.stat == "quantile" else ""))
    text.append(f"  atol {out.atol:g}  rtol {out.rtol:g}")
    counts = [f"{n} {what} in {where}" for n, what, where in (
        (out.target_nan, "NaN", "target"), (out.target_inf, "Inf", "target"),
        (out.reference_nan, "NaN", "reference"), (out.reference_inf, "Inf", "reference")) if n]
    if counts:
        text.append("\n" + ", ".join(counts), "yellow")
    return text


def _stats_table(out: OutputComparison) -> Table:
    from rich.table import Table
    from rich.text import Text
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column, justify in (("", "left"), ("abs error", "right"), ("rel error", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for key in STAT_ROWS:
        label = f"p{out.quantile * 100:g}" if key == "quantile" else key
        a, r = out.abs_stats.get(key), out.rel_stats.get(key)
        mark: Text | str = ""
        if key == out.stat:  # elemwise has no statistic to mark: the mismatched row decides
            over = _over(a, out.atol, out.abs_nan) and _over(r, out.rtol, out.rel_nan)
            mark = Text("> both tolerances", "red") if over else Text("within a tolerance", "green")
        table.add_row(label, _num(a), _num(r), mark, style="bold" if key == out.stat else None)
    table.add_row("tolerance", _num(out.atol), _num(out.rtol), "", style=DIM_STYLE)
    table.add_row("min to pass", _num(out.min_atol), _num(out.min_rtol), "(one tolerance alone)")
    table.add_row("", _num(out.min_atol_given_rtol), _num(out.min_rtol_given_atol),
                  "(keeping the other as set)", style=DIM_STYLE)
    mismatched = Text(f"{out.mismatched}/{out.size}", FAIL_STYLE if out.mismatched else PASS_STYLE)
    table.add_row("mismatched", mismatched, "", "elements over both atol and rtol",
                  style="bold" if out.stat == "elemwise" else None)
    return table


def _over(value: float | None, tol: float, nan_count: int) -> bool:
    return bool(nan_count) or value is None or math.isnan(value) or value > tol


def _bin_label(lo: float, hi: float) -> str:
    if lo == hi:
        return "0 (exact)" if lo == 0 else "inf"
    return f"(0, {hi:.0e})" if lo == 0 else f"[{lo:.0e}, {hi:.0e})"


def _histogram(out: OutputComparison) -> Table:
    """Bars of absolute error per decade; bins above atol in red."""
    from rich.table import Table
    from rich.text import Text
    bins = [(b["lo"], b["hi"], int(b["count"])) for b in out.histogram]
    if out.abs_nan:
        bins.append((math.nan, math.nan, out.abs_nan))
    peak = max(count for _, _, count in bins) or 1
    table = Table(box=None, pad_edge=False, show_edge=False, show_header=True, header_style="bold")
    table.add_column("abs error")
    table.add_column("count", justify="right")
    table.add_column("")
    for lo, hi, count in bins:
        label = "NaN" if math.isnan(lo) else _bin_label(lo, hi)
        bad = not hi <= out.atol  # NaN and inf bins are bad too
        bar = "█" * max(1 if count else 0, round(BAR_WIDTH * count / peak))
        table.add_row(label, str(count), Text(bar, "red" if bad else "green"))
    return table


def _worst_table(out: OutputComparison) -> Table:
    from rich.table import Table
    from rich.text import Text
    table = Table(title="worst elements", title_justify="left", title_style="bold", box=None,
                  pad_edge=False, show_edge=False, header_style="bold")
    for column in ("index", "target", "reference", "abs", "rel", ""):
        table.add_column(column, justify="left" if column in ("index", "") else "right")
    for e in out.worst:
        verdict = Text("✗", FAIL_STYLE) if e.mismatched else Text("ok", DIM_STYLE)
        table.add_row(str(list(e.index)), _num(e.target), _num(e.reference), _num(e.abs), _num(e.rel), verdict)
    return table


def render_layers(report: LayerReport) -> RenderableType:
    """A ``compare.layers.LayerReport``: the per-tensor table in topological order (elided beyond
    ``layers.TABLE_ROWS``), then the diagnosis lines, the culprit first."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from bisector.compare.layers import shown_rows

    stat = report.rows[0].comparison.stat_key if report.rows else "max"
    columns = ["#", "tensor", "node", "max abs", "max rel", *([f"{stat} abs"] if stat != "max" else []), "rel L2",
               report.ranked_by, ""]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("tensor", "node", "") else "left")
    marks = {report.first_failing: "first out of tolerance", report.first_nonfinite: "first non-finite"}
    if report.ranking:
        marks.setdefault(report.ranking[0]["tensor"], f"largest {report.ranked_by}")
    for i in shown_rows(report):
        if i is None:
            table.add_row("…", *[""] * (len(columns) - 1), style=DIM_STYLE)
            continue
        r = report.rows[i]
        own = r.own_error if report.ranked_by == "own error" else r.jump
        note = Text(marks.get(r.tensor, ""), "bold")
        chosen = [_num(r.stat_value)] if stat != "max" else []
        table.add_row(str(r.position), r.tensor, f"{r.node} ({r.op_type})", _num(r.comparison.abs_stats.get("max")),
                      _num(r.comparison.rel_stats.get("max")), *chosen, _num(r.rel_l2), _num(own),
                      note, style=None if r.passed else "red")
    lines = [Text(line, "bold" if line.startswith("suspect") else "") for line in report.diagnosis()]
    return Group(table, *lines, _verdict_line(report.passed, report.summary()))
