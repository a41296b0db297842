"""The import contracts of pyproject.toml (``[tool.importlinter]``): they hold for the package, and
they break when a module imports against them (so a contract that checks nothing cannot pass)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

STRATEGIES = "strategies are pure: of bisector they import only the Verdict (checks.base)"
SESSION_STORE = "the session store imports neither onnx nor the CLI"
LOWER_LAYERS = "the model toolkit and the backends know nothing of the layers above them"
LAYERS = "layers point down only"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with the contracts of its pyproject.toml."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"})


def copy_package(dest: Path) -> Path:
    shutil.copytree(ROOT / "bisector", dest / "bisector", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def broken(output: str) -> set[str]:
    """The names of the contracts the report lists as broken."""
    return {line.partition(" BROKEN")[0] for line in output.splitlines() if " BROKEN" in line}


def test_the_package_keeps_its_import_contracts():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 4 kept, 0 broken." in run.stdout


@pytest.mark.parametrize("module, line, contracts", [
    ("model/fingerprint.py", "import bisector.cli", {LOWER_LAYERS, LAYERS}),
    ("model/shapes.py", "from bisector.backends import record", {LAYERS}),
    ("backends/record.py", "from bisector.engine import Engine", {LOWER_LAYERS, LAYERS}),
    ("strategies/base.py", "from bisector.errors import UserError", {STRATEGIES}),
    ("strategies/reduce.py", "from bisector.model import graph", {STRATEGIES}),
    ("artifacts/journal.py", "import onnx", {SESSION_STORE}),
    ("checks/base.py", "from bisector.artifacts import journal", {LAYERS}),
    ("compare/comparator.py", "from bisector.backends import target", {LAYERS}),
])
def test_an_import_against_a_contract_breaks_it(tmp_path, module, line, contracts):
    root = copy_package(tmp_path)
    path = root / "bisector" / module
    path.write_text(path.read_text() + f"\n\ndef _against_the_contract():\n    {line}\n")
    run = lint_imports(root)
    assert run.returncode != 0
    assert broken(run.stdout) == contracts, run.stdout + run.stderr
