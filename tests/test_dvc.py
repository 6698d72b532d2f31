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
    params["indomain"].update(architecture="indomain-test", folds=2, epochs=1, batch_size=32)
    params["tracking"]["uri"] = mlflow_uri
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    dvc("init", "--no-scm", "-q")
    first = dvc("repro")
    for stage in ("synth", "ingest", "train_scorer", "score"):
        assert f"Running stage '{stage}'" in first
    assert (work / "data" / "ingest" / "manifest.parquet").is_file()
    assert (work / "data" / "scores" / "scores.parquet").is_file()
    assert "up to date" in dvc("repro")
    assert "up to date" in dvc("status")
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"synth", "ingest", "train_scorer", "score"}
    # A changed score setting re-runs only `score`, and the embedding store spares re-encoding.
    params["score"]["fusion"] = "zscore"
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = dvc("repro")
    assert "Running stage 'score'" in rerun and "Running stage 'train_scorer'" not in rerun
    report = yaml.safe_load((work / "data" / "scores" / "score.json").read_text())
    assert report["fusion"] == "zscore" and report["images_encoded"] == 0 and report["texts_encoded"] == 0
