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


@pytest.fixture(scope="session")
def ray():
    """A real local Ray cluster for the whole run (2 CPUs, 2 logical GPUs): the ``ray`` module."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'bisector[ray]'")
    with pytest.MonkeyPatch.context() as patch:  # no token in ~/.ray that another cluster may rewrite
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()
