"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on small inputs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 for the session: SQLite backend store, a local artifact
    destination served through the server (proxied artifacts, as a team server runs); its URI.

    Clients reach artifacts only over HTTP (``mlflow-artifacts:/``), never the folder itself.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("wb")
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    # Its own process group: the server's workers stop with it.
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a cold start migrates the SQLite schema: seconds on a busy machine
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {server.returncode}: {(root / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 120 s: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield uri
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if server.poll() is not None:
            break
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Whatever of its group is left (uvicorn/gunicorn workers) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def tiny_base() -> Mapping[str, Any]:
    """The ``base`` section (``dldc build-base``) at toy size: the demo chain's shapes, every stage in seconds.

    Read-only; tests that need other values spread it into a new dict.
    """
    return MappingProxyType(
        {
            "n_images": 100,  # 10 per scene: the scene check needs test-split images
            "resolution": 16,
            "vae_channels": [8, 8],
            "unet_channels": [8, 16],
            "unet_cross_attention": [True, True],
            "attention_head_dim": 4,
            "text_width": 16,
            "text_layers": 1,
            "text_heads": 2,
            "norm_groups": 4,
            "vae_steps": 2,
            "vae_batch": 4,
            "vae_crop": 8,
            "text_steps": 2,
            "text_batch": 4,
            "steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "check_images_per_scene": 1,
            "check_steps": 1,
        }
    )


@pytest.fixture(autouse=True)
def _not_in_a_pod(monkeypatch):
    """Tests track into local SQLite stores; a CI runner that is itself a Kubernetes pod must not refuse them."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
