"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on small inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Stage subprocesses (CLI, kfp.local) must find this interpreter's `dldc` and `python3`.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def rsicd_root() -> Path:
    """The real RSICD subset in ../shared/data (read-only)."""
    root = SHARED_DATA / "rsicd-dev"
    if not (root / "dataset_rsicd.json").is_file():
        pytest.skip(f"real data not found at {root} (see ../shared/data/README.md)")
    return root


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
