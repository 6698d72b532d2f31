"""The RSICD subset as a user's dataset through the pipeline under kfp.local."""

import json

import mlflow
import pandas as pd
import pytest

from dldc.tracking import ROLE_TAG


@pytest.mark.slow
def test_your_dataset_through_kfp_local_with_no_synthrs_task(tmp_path, mlflow_uri, monkeypatch, rsicd_root):
    """The RSICD subset as a user's dataset: ingest → train-scorer → score → select (proxy) → export, report.

    Scoring fans out over 20 parts planned from the data (9,300 pairs, one part per 465).
    """
    from dldc.data.manifest import dataset_root, read_manifest
    from pipelines import local

    monkeypatch.chdir(tmp_path)
    local.init(tmp_path / "kfp-root")
    settings = [f"tracking.uri={mlflow_uri}", "tracking.experiment=t-kfp-rsicd", "ingest.workers=1",
                "indomain.architecture=indomain-test", "indomain.epochs=1"]  # fmt: skip
    local.run(dataset_uri=str(rsicd_root), profile="rsicd-dev", train_models=False, select_mode="proxy",
              caption_rounds=0, score_part_pairs=465, settings=settings)  # fmt: skip
    (run,) = (tmp_path / "kfp-root").iterdir()
    ran = {path.name for path in run.iterdir()}
    parts = {name for name in ran if name.startswith("for-loop-4-iteration-")}
    assert ran - parts == {"ingest-2", "train-scorer", "export-scorer", "plan-parts", "gather-scores", "caption",
                           "select-3", "export-dataset-2", "report-2"}  # fmt: skip
    assert len(parts) == 20
    # The manifest artifact carries the dataset: the path it records resolves inside the artifact.
    manifest = run / "ingest-2" / "manifest" / "manifest.parquet"
    frame, meta = read_manifest(manifest)
    assert meta.root == "dataset" and meta.extra["source"] == str(rsicd_root) and frame["scene"].nunique() == 31
    assert all((dataset_root(manifest, meta) / image).is_file() for image in frame["image"].iloc[::500])
    selection = json.loads((run / "select-3" / "selection" / "selection.json").read_text())
    assert selection["mode"] == "proxy" and len(selection["ratios"]) == 31
    export = run / "export-dataset-2" / "dataset"
    kept = pd.read_parquet(export / "provenance.parquet")
    exported = json.loads((export / "dataset_rsicd.json").read_text())
    assert sum(len(entry["sentences"]) for entry in exported["images"]) == (kept["status"] == "kept").sum() > 0
    assert (run / "report-2" / "folder" / "index.html").is_file()
    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("t-kfp-rsicd")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
    # export-scorer ran as a no-op (export_precision none): no stage, no run.
    assert stages == sorted(["ingest", "train_scorer", *["score"] * 20, "gather_scores", "caption", "select",
                             "export_dataset", "report"])  # fmt: skip
    gathered = pd.read_parquet(run / "gather-scores" / "scores" / "scores.parquet")
    assert sorted(gathered["pair_id"]) == sorted(frame["pair_id"])  # every pair scored once, by one part
