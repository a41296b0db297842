"""One node table, two renderings: a rich table for the console and markdown rows for ``report.md``.

``bisector reduce`` (its culprits) and ``bisector precision`` (its keep-set) print the same kind of
table: a title, one row per node, plain-text cells. Build it once, render it twice::

    table = NodeTable("keep in fp32: 2 of 38 nodes", ("node", "op type", "tensor"), code=(0, 2))
    table.add("matmul6", "MatMul", "matmul6_out")
    console.print(table.rich())      # rich is imported only here
    md += table.markdown()           # ["| node | op type | tensor |", "|---|---|---|", "| `matmul6` | ..."]

Markdown cells in ``code`` columns are wrapped in backticks (node and tensor names); a ``|`` in any
cell is escaped so a name cannot break the table. Empty cells stay empty (no empty backticks).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeTable:
    title: str
    columns: tuple[str, ...]
    code: tuple[int, ...] = (0,)  # columns rendered as `code` in markdown
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *cells) -> None:
        """One row; cells are turned into text (``None`` -> empty)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple("" if c is None else str(c) for c in cells))

    def markdown(self) -> list[str]:
        """Header, rule and one line per row (no title: the report's text introduces it)."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            cells = [_md_cell(c, i in self.code) for i, c in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def rich(self):
        """A ``rich.table.Table`` with the title left-justified; cells are not markup."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.title, title_justify="left")
        for col in self.columns:
            table.add_column(col)
        for row in self.rows:
            table.add_row(*(Text(c) for c in row))
        return table


def _md_cell(text: str, code: bool) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text
