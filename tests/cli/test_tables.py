"""The node table that reduce (culprits) and precision (keep-set) print and write to report.md."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bisector.cli.tables import rich_table
from bisector.commands.base import Table


def test_markdown_rows_code_columns_and_escapes():
    t = Table("keep in fp32: 2 of 38 nodes", ("node", "op type", "own error", "tensor"),
              (("matmul6", "MatMul", "inf/NaN", "matmul6_out"), ("a|b", "Mul", "0.5", "")), code=(0, 3))
    assert t.markdown() == ["| node | op type | own error | tensor |", "|---|---|---|---|",
                            "| `matmul6` | MatMul | inf/NaN | `matmul6_out` |",
                            "| `a\\|b` | Mul | 0.5 |  |"]


def test_rich_rendering_keeps_names_literal():
    t = Table("culprit: 1 of 20 nodes", ("node", "op type", "inputs", "outputs"),
              (("relu[bold]4", "Relu", "x, y", "relu4_out"),))
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(rich_table(t))
    text = out.getvalue()
    assert "culprit: 1 of 20 nodes" in text and "relu[bold]4" in text and "relu4_out" in text


def test_row_length_must_match_the_columns():
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        Table("t", ("a", "b"), (("1", "2", "3"),))
