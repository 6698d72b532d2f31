"""`dvc repro` runs the stages from dvc.yaml; a second run has nothing to do."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dvc_repro_runs_then_is_up_to_date(tmp_path, mlflow_uri):
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    shutil.copytree(REPO / "dldc", work / "dldc", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["synth"].update(n_images=30, size=32)
    params["tracking"]["uri"] = mlflow_uri
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    dvc("init", "--no-scm", "-q")
    first = dvc("repro")
    assert "Running stage 'synth'" in first and "Running stage 'ingest'" in first
    assert (work / "data" / "ingest" / "manifest.parquet").is_file()
    assert "up to date" in dvc("repro")
    assert "up to date" in dvc("status")
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"synth", "ingest"}
