"""``bisector diff-tactics``: which (layer, tactic) pairs go with failing builds.

Polygraphy's ``inspect diff-tactics`` layout and output (``--dir D`` with ``D/good`` and ``D/bad``,
or ``--good``/``--bad``, files or directories; tactics files of bisector's format or Polygraphy's
TacticReplayData; other files are skipped), then the ranking of ``bisector.build.ranking`` and its
verdict. No session: it prints and returns 0 (2 on a user error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

TOP = 10  # ranking rows shown by default


def diff_tactics(
    ctx: typer.Context,
    dir: Annotated[Optional[Path], typer.Option("--dir", help="A directory holding good/ and bad/ tactics files (default: the current one)")] = None,
    good: Annotated[Optional[list[Path]], typer.Option("--good", help="Good tactics files, or directories of them (repeat the flag for more)")] = None,
    bad: Annotated[Optional[list[Path]], typer.Option("--bad", help="Bad tactics files, or directories of them (repeat the flag for more)")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows of the ranking to show (0: all)")] = TOP,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (every suspect); the tables go to stderr")] = False,
):
    """Rank the tactics that go with failing builds, from good and bad tactics files (Polygraphy's inspect diff-tactics, plus a Fisher exact test)."""
    from bisector.build.ranking import is_sure, rank, set_difference, verdict
    from bisector.build.tactics import collect, pairs
    from bisector.cli.run import Ui
    from bisector.errors import UserError

    ui = (ctx.obj or {}).get("ui") or Ui(json_out)
    root = dir if dir is not None else Path(".")
    good_paths, bad_paths = good or [root / "good"], bad or [root / "bad"]
    good_files, bad_files = collect(good_paths), collect(bad_paths)
    if not good_files and not bad_files:
        where = " and ".join(str(p) for p in [*good_paths, *bad_paths])
        raise UserError(f"no tactics files in {where}", hint="give --dir D (with D/good and D/bad), or --good and --bad")
    builds = [(pairs(f.tactics), False) for _, f in good_files] + [(pairs(f.tactics), True) for _, f in bad_files]
    names = {(t.layer, t.tactic): t.name for _, f in [*good_files, *bad_files] for t in f.tactics.values()}
    suspects, difference = rank(builds), set_difference(builds)
    text = verdict(suspects, builds)
    out = ui.out
    out.print(f"Loaded {len(good_files)} good tactic replays.\nLoaded {len(bad_files)} bad tactic replays.",
              highlight=False)
    _print_difference(out, difference, names)
    out.print(_ranking_table(suspects[:top] if top > 0 else suspects, names, len(suspects)))
    out.print(text, highlight=False, soft_wrap=True, style="bold green" if is_sure(suspects) else "bold yellow")
    if json_out:
        doc = {"command": "diff-tactics", "good": [str(p) for p, _ in good_files], "bad": [str(p) for p, _ in bad_files],
               "set_difference": [{"layer": layer, "tactic": tactic, "name": names.get((layer, tactic), "")}
                                  for layer, tactic in difference],
               "suspects": [s.to_json() for s in suspects], "sure": is_sure(suspects), "verdict": text,
               "exit_code": 0}
        sys.stdout.write(json.dumps(doc) + "\n")
        ui.summary_written = True
    return 0


diff_tactics.__name__ = "diff-tactics"  # cli/app.py names each command after its function


def _print_difference(out, difference: list[tuple[str, str]], names: dict) -> None:
    """Polygraphy's lines: per layer, the tactics seen only in bad files."""
    if not difference:
        out.print("Could not determine potentially bad tactics. Try providing more tactic replay files if possible.",
                  highlight=False)
        return
    by_layer: dict[str, list[str]] = {}
    for layer, tactic in difference:
        name = names.get((layer, tactic))
        by_layer.setdefault(layer, []).append(f"{tactic} ({name})" if name else tactic)
    out.print("Found potentially bad tactics (seen only in bad files):", highlight=False)
    for layer, algos in by_layer.items():
        out.print(f"Layer: {layer}\n    Algorithms: {algos}", highlight=False, markup=False)


def _ranking_table(suspects: list, names: dict, total: int):
    from rich.table import Table
    from rich.text import Text

    title = f"Suspects, best first (one-sided Fisher exact test; {len(suspects)} of {total} pairs)"
    table = Table(title=title, title_justify="left")
    for col in ("#", "layer", "tactic", "name", "p-value", "odds ratio", "ochiai",
                "bad with", "good with", "bad without", "good without"):
        table.add_column(col, justify="right" if col not in ("layer", "tactic", "name") else "left")
    for i, s in enumerate(suspects, start=1):
        cells = (str(i), s.layer, s.tactic, names.get((s.layer, s.tactic), ""), f"{s.p_value:.3g}",
                 f"{s.odds_ratio:.3g}", f"{s.ochiai:.3f}", str(s.bad_with), str(s.good_with),
                 str(s.bad_without), str(s.good_without))
        table.add_row(*(Text(c) for c in cells))
    return table
