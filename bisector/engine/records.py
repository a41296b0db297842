"""What a check leaves behind: its line in the events log (``--log-file``) and the clean-up of its
iteration directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bisector.checks.base import Artifact
from bisector.model.weights import DATA_SUFFIX

EVENTS_LOGGER = "bisector.events"  # one line per event, for --log-file (the console shows events itself)
events_log = logging.getLogger(EVENTS_LOGGER)


def log_event(e: dict[str, Any]) -> None:
    """One log line per event, for ``--log-file`` (the console shows events its own way): verdicts
    and the start and end at INFO, the rest at DEBUG."""
    kind = e["event"]
    level = logging.INFO if kind in ("verdict", "start", "done", "dropped") else logging.DEBUG
    if not events_log.isEnabledFor(level):  # nothing records it (no --log-file): build no line
        return
    if kind == "verdict":
        note = f" ({e['note']})" if e.get("note") else ""
        events_log.info("iteration %s: %s [%s] -> %s in %.2f s%s%s", e["iteration"], e["label"], e["phase"],
                        e["verdict"], e["duration_s"], " (speculative)" if e.get("speculative") else "", note)
    else:
        events_log.log(level, "%s: %s", kind, {k: v for k, v in e.items() if k not in ("event", "time", "result")})


def remove_intermediate(artifact: Artifact) -> None:
    """Remove what bisector put in an iteration directory: the artifact, its own data file
    (``polygraphy_debug.onnx.data``), its inputs and the links to the session's weights. The
    check's log and whatever the check wrote stay."""
    path = Path(artifact.path)
    for p in (path, path.with_name(path.name + DATA_SUFFIX), artifact.inputs_path):
        if p is not None and Path(p).is_file():
            Path(p).unlink()
    weights = Path(artifact.weights_dir) if artifact.weights_dir else None
    workdir = Path(artifact.workdir)
    if weights is None or not weights.is_dir() or not workdir.is_dir() or weights.resolve() == workdir.resolve():
        return  # (int8 candidates: their weights are in the iteration directory, with the check's files)
    for src in weights.iterdir():
        dst = Path(artifact.workdir) / src.name
        try:
            if dst.is_file() and os.path.samefile(src, dst):
                dst.unlink()
        except OSError:
            pass
