"""A command's node table (``bisector.commands.base.Table``) as a rich table for the console;
``Table.markdown()`` gives the same rows for ``report.md``::

    console.print(rich_table(report.table))
"""

from __future__ import annotations

from rich.table import Table as RichTable
from rich.text import Text


def rich_table(table) -> RichTable:
    """A rich table with the title left-justified; cells are text, never markup."""
    out = RichTable(title=table.title, title_justify="left")
    for col in table.columns:
        out.add_column(col)
    for row in table.rows:
        out.add_row(*(Text(c) for c in row))
    return out
