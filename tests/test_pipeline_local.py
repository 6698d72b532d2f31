"""The demo pipeline end to end under kfp.local (its own file: xdist runs files side by side)."""

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from dldc.tracking import ROLE_TAG

sys.path.insert(0, str(Path(__file__).parent))
from stage_graph import dvc_stages, kfp_tasks, stage_of  # noqa: E402


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local_and_logs_to_mlflow(tmp_path, mlflow_uri, monkeypatch, tiny_base):
    from pipelines import local
    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(tmp_path / "kfp-root")
    settings = [
        f"tracking.uri={mlflow_uri}",
        "tracking.experiment=t-kfp",
        "ingest.workers=1",
        "indomain.architecture=indomain-test",
        "indomain.folds=2",
        "indomain.epochs=1",
        "synth.scenes=[farmland, forest]",  # 10 images per scene: one in val (trials) and one in test
        *[f"base.{key}={value}" for key, value in tiny_base.items()],
        "finetune.resolution=16",
        "finetune.rank=4",
        "finetune.steps=2",
        "finetune.batch_size=4",
        "finetune.sample_steps=1",
        "generate.steps=1",
        "generate.batch_size=8",
        "generate.prompts_per_image=1",
        "evaluate.bootstrap=10",
        "evaluate.kid_subsets=2",
        "evaluate.kid_subset_size=4",
        "select.trial_steps=2",
        "select.trial_generate_steps=1",
        "select.trial_prompts_per_image=1",
        "segment.patch_size=32",
        "segment.widths=[4, 8]",
        "segment.steps=2",
        "segment.batch_size=4",
        "segment.eval_every=1",
        "segment.synthetic_per_arm=4",
        "segment.gen_steps=1",
        "segment.bootstrap=10",
    ]
    dldc_pipeline(
        n_images=20, size=32, noise_rate=0.2, seed=1, score_parts=2, settings=settings, caption_rounds=1,
        select_ratios=[0.0, 0.3], export_precision="fp32",  # the IEL runs on the ONNX export of the scorer
    )
    manifests = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" not in str(p)]
    assert len(manifests) == 1
    frame = pd.read_parquet(manifests[0])
    assert len(frame) == 100 and frame["scene"].nunique() == 2
    scores = [p for p in (tmp_path / "kfp-root").rglob("scores.parquet") if "gather-scores" in str(p)]
    assert len(scores) == 1
    fused = pd.read_parquet(scores[0])
    (score_report,) = [p for p in (tmp_path / "kfp-root").rglob("score.json") if "gather-scores" in str(p)]
    scorer = json.loads(score_report.read_text())["scorers"][0]
    assert scorer["name"] == "indomain" and scorer["scorer_id"].startswith("onnx-fp32:") and scorer["scene_head"]
    assert sorted(fused["pair_id"]) == sorted(frame["pair_id"])
    assert fused["indomain"].between(-1, 1).all() and fused["scene_percentile"].between(0, 1).all()
    captioned = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" in str(p)]
    assert len(captioned) == 1
    repaired = pd.read_parquet(captioned[0])
    assert sorted(repaired["pair_id"]) == sorted(frame["pair_id"])
    assert repaired["caption_source"].str.match(r"^(original|egl:(mask2text|retrieval):.+)$").all()
    (selection_file,) = (tmp_path / "kfp-root").rglob("selection.json")
    selection = json.loads(selection_file.read_text())
    assert selection["mode"] == "loop" and set(selection["trials"]) == {"0", "0.3"}
    assert set(selection["ratios"]) == {"farmland", "forest"}
    (evaluation,) = [p for p in (tmp_path / "kfp-root").rglob("evaluate.json") if "select-trial" not in str(p)]
    assert set(json.loads(evaluation.read_text())["arms"]) == {"base", "raw", "clean", "global", "real"}
    (segmented,) = (tmp_path / "kfp-root").rglob("segment.json")
    assert set(json.loads(segmented.read_text())) == {"real"} | {
        f"{p}.{a}" for p in ("pseudo-label", "layout-prompt") for a in ("base", "raw", "clean", "global")
    }

    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("t-kfp")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
    assert len(parents) == 1
    # One finished MLflow run per task of the compiled pipeline (each loop body once per item: two
    # score parts, two ratios); planning the parts runs no stage.
    from kfp import compiler

    compiler.Compiler().compile(dldc_pipeline, package_path=str(tmp_path / "p.yaml"))
    tasks = kfp_tasks(next(yaml.safe_load_all((tmp_path / "p.yaml").read_text())))
    names = {"score_part": "score", "gather_scores": "gather_scores", "plan_parts": None}
    # Branches this run does not take: a given dataset's ingest, a named base, proxy selection, the clean-only end.
    skipped = {"ingest-2", "name-base", "select-2", "select-3", "export-dataset-2", "report-2"}
    ran = [task for task in tasks if task not in skipped]
    expected = [names.get(base, stage_of(base)) for task in ran if (base := task.replace("-", "_"))]
    expected = [name for name in expected if name] + ["score", "select_trial"]  # the second part and ratio
    assert stages == sorted(expected)
    assert {stage_of(name) for name in stages} == {stage_of(name) for name in dvc_stages()} | {"export_scorer"}
    assert all(r.info.status == "FINISHED" for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
