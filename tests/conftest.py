"""Fixtures shared by the end-to-end session tests."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from fixtures.models import make_chain


@pytest.fixture
def chain_model(tmp_path) -> Path:
    """``tmp_path/m.onnx``: the 20-node chain (relu4 is the node the tests' faulty check breaks)."""
    path = tmp_path / "m.onnx"
    onnx.save(make_chain(), str(path))
    return path
