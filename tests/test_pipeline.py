"""The Kubeflow pipeline: compiles to IR YAML and runs end to end under kfp.local."""

import subprocess

import mlflow
import pandas as pd
import pytest
import yaml

from dldc.tracking import ROLE_TAG


def test_dldc_never_imports_kfp():
    code = "import sys, dldc.cli, dldc.stages, dldc.data.ingest, dldc.data.synth; print('kfp' in sys.modules)"
    out = subprocess.run(["python3", "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"


def test_pipeline_compiles_to_ir_yaml(tmp_path):
    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run(["dldc", "pipeline", "compile", "--out", str(out)], check=True)
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {
        "synth", "ingest", "train-scorer", "export-scorer", "plan-parts", "for-loop-1", "gather-scores", "caption"
    }
    assert set(tasks["caption"]["dependentTasks"]) == {"gather-scores", "ingest", "train-scorer"}
    assert tasks["ingest"]["dependentTasks"] == ["synth"]
    assert tasks["for-loop-1"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-parts-Output"
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, e in executors.items() if e["container"].get("resources", {}).get("accelerator")}
    assert gpu == {"exec-train-scorer", "exec-export-scorer", "exec-score-part", "exec-caption"}
    assert {executors[name]["container"]["image"] for name in gpu} == {"dldc:0.1.0-cuda"}
    assert executors["exec-ingest"]["container"]["image"] == "dldc:0.1.0-cpu"


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local_and_logs_to_mlflow(tmp_path, mlflow_uri, monkeypatch):
    from kfp import local

    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    settings = [
        f"tracking.uri={mlflow_uri}",
        "tracking.experiment=t-kfp",
        "ingest.workers=1",
        "indomain.architecture=indomain-test",
        "indomain.folds=2",
        "indomain.epochs=1",
    ]
    dldc_pipeline(n_images=20, size=32, noise_rate=0.2, seed=1, score_parts=2, settings=settings, caption_rounds=1)
    manifests = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" not in str(p)]
    assert len(manifests) == 1
    frame = pd.read_parquet(manifests[0])
    assert len(frame) == 100 and frame["scene"].nunique() == 10
    scores = [p for p in (tmp_path / "kfp-root").rglob("scores.parquet") if "gather-scores" in str(p)]
    assert len(scores) == 1
    fused = pd.read_parquet(scores[0])
    assert sorted(fused["pair_id"]) == sorted(frame["pair_id"])
    assert fused["indomain"].between(-1, 1).all() and fused["scene_percentile"].between(0, 1).all()
    captioned = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" in str(p)]
    assert len(captioned) == 1
    repaired = pd.read_parquet(captioned[0])
    assert sorted(repaired["pair_id"]) == sorted(frame["pair_id"])
    assert repaired["caption_source"].str.match(r"^(original|egl:(mask2text|retrieval):.+)$").all()

    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("t-kfp")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
    assert len(parents) == 1
    assert stages == ["caption", "gather_scores", "ingest", "score", "score", "synth", "train_scorer"]
    assert all(r.info.status == "FINISHED" for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
