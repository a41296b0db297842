"""What the end-to-end session tests share: running ``python -m bisector`` as a real process and
reading what it leaves behind."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SCRIPTS = ROOT / "tests" / "scripts"
EXIT_STOPPED = 3


def bisector(*args: str, cwd: Path, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run bisector to its end; stdin is /dev/null unless given."""
    return subprocess.run([sys.executable, "-m", "bisector", *args], cwd=cwd, env=ENV, input=stdin,
                          stdin=subprocess.DEVNULL if stdin is None else None, capture_output=True, text=True,
                          timeout=timeout, check=False)


def faulty(fault: str = "scale:relu4") -> list[str]:
    """The fixture check that makes ``fault`` break the model (see fixtures/faulty_check.py)."""
    return [sys.executable, "-m", "fixtures.faulty_check", "polygraphy_debug.onnx", "--fault", fault,
            "--load-inputs", "inputs.json"]


def journal(session: Path, torn_ok: bool = False) -> list[dict]:
    """The session's journal entries ([] before it exists). Every line must be a complete JSON entry,
    unless ``torn_ok``: after a kill -9 the last line may be torn (the journal's reader skips it too)."""
    path = session / "journal.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if not torn_ok:
                raise
    return out


def report(session: Path) -> dict:
    return json.loads((session / "result" / "report.json").read_text())


def one_error_line(stderr: str) -> str:
    """The error of a failed run: exactly one 'bisector: error:' line, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("bisector: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def executable(path: Path, body: str) -> Path:
    """A Python script that runs as a command (``#!`` this interpreter)."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def tmpfs(mnt: Path, options: str):
    """A tmpfs mounted at ``mnt`` for the duration (root and CAP_SYS_ADMIN; the test skips without)."""
    import pytest

    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}): {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
