"""The demo pipeline end to end under kfp.local, twice, against a real ``mlflow server`` (its own file: xdist
runs files side by side)."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from dldc.tracking import GROUP_TAG, ROLE_TAG

sys.path.insert(0, str(Path(__file__).parent))
from stage_graph import dvc_stages, kfp_tasks, stage_of  # noqa: E402


@pytest.mark.slow
def test_two_pipeline_runs_against_a_team_mlflow_server(tmp_path, mlflow_server, monkeypatch, tiny_base):
    """Run 1 registers and promotes the first champion; run 2 (another LoRA seed) sees it and decides by the
    gate. Then, over HTTP: every stage run, the registered model, both aliases, and the champion loaded
    through pyfunc generating an image with the tiny base."""
    from pipelines import local
    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(tmp_path / "kfp-root")
    settings = [
        f"tracking.uri={mlflow_server}",
        "tracking.experiment=t-kfp",
        "registry.model_name=t-kfp-lora",
        "promote.baselines=[]",  # a 2-step LoRA cannot beat raw with a clear interval: the champion gate is the point

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
        "select.calibrate_levels=[0.0, 1.0]",
        "select.proxy_bootstrap=20",
        "segment.patch_size=32",
        "segment.widths=[4, 8]",
        "segment.steps=2",
        "segment.batch_size=4",
        "segment.eval_every=1",
        "segment.synthetic_per_arm=4",
        "segment.gen_steps=1",
        "segment.bootstrap=10",
    ]
    demo = {"n_images": 20, "size": 32, "noise_rate": 0.2, "seed": 1, "score_parts": 2, "caption_rounds": 1,
            "select_ratios": [0.0, 0.3], "select_rows": [0, 1],
            "export_precision": "fp32"}  # the IEL runs on the ONNX export of the scorer
    local.run(settings=settings, **demo)
    (first,) = (tmp_path / "kfp-root").iterdir()
    manifests = [p for p in first.rglob("manifest.parquet") if "caption" not in str(p)]
    assert len(manifests) == 1
    frame = pd.read_parquet(manifests[0])
    assert len(frame) == 100 and frame["scene"].nunique() == 2
    scores = [p for p in first.rglob("scores.parquet") if "gather-scores" in str(p)]
    assert len(scores) == 1
    fused = pd.read_parquet(scores[0])
    (score_report,) = [p for p in first.rglob("score.json") if "gather-scores" in str(p)]
    scorer = json.loads(score_report.read_text())["scorers"][0]
    assert scorer["name"] == "indomain" and scorer["scorer_id"].startswith("onnx-fp32:") and scorer["scene_head"]
    assert sorted(fused["pair_id"]) == sorted(frame["pair_id"])
    assert fused["indomain"].between(-1, 1).all() and fused["scene_percentile"].between(0, 1).all()
    captioned = [p for p in first.rglob("manifest.parquet") if "caption" in str(p)]
    assert len(captioned) == 1
    repaired = pd.read_parquet(captioned[0])
    assert sorted(repaired["pair_id"]) == sorted(frame["pair_id"])
    assert repaired["caption_source"].str.match(r"^(original|egl:(mask2text|retrieval):.+)$").all()
    (selection_file,) = first.rglob("selection.json")
    selection = json.loads(selection_file.read_text())
    assert selection["mode"] == "calibrate" and set(selection["trials"]) == {"λ=0", "λ=1"}
    assert set(selection["ratios"]) == {"farmland", "forest"}
    (evaluation,) = [p for p in first.rglob("evaluate.json") if "select-trial" not in str(p)]
    assert set(json.loads(evaluation.read_text())["arms"]) == {"base", "raw", "clean", "global", "real"}
    (segmented,) = first.rglob("segment.json")
    assert set(json.loads(segmented.read_text())) == {"real"} | {
        f"{p}.{a}" for p in ("pseudo-label", "layout-prompt") for a in ("base", "raw", "clean", "global")
    }

    decided = json.loads((first / "promote" / "decision" / "decision.json").read_text())
    assert decided["outcome"] == "promoted" and decided["champion_before"] is None  # the first champion

    # Run 2: the same data and evaluation protocol, another LoRA seed: a new candidate against the champion.
    local.init(tmp_path / "kfp-root-2")
    local.run(settings=[*settings, "finetune.seed=7"], **demo)
    (second,) = (tmp_path / "kfp-root-2").iterdir()
    decision = json.loads((second / "promote" / "decision" / "decision.json").read_text())
    assert decision["champion_before"]["version"] == decided["candidate"]["version"]
    assert decision["candidate"]["version"] != decided["candidate"]["version"]
    assert decision["outcome"] in ("promoted", "rejected")  # decided by the gate, not "no champion"
    assert all(c["champion"] is not None and c["improvement"] is not None for c in decision["criteria"])

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    versions = client.search_model_versions("name='t-kfp-lora'")
    assert sorted(v.version for v in versions) == sorted([decided["candidate"]["version"],
                                                          decision["candidate"]["version"]])  # fmt: skip
    champion = decision["candidate"]["version"] if decision["promoted"] else decided["candidate"]["version"]
    assert client.get_model_version_by_alias("t-kfp-lora", "champion").version == champion
    assert client.get_model_version_by_alias("t-kfp-lora", "challenger").version == decision["candidate"]["version"]
    assert client.get_model_version("t-kfp-lora", champion).tags["base_model"].startswith("bundled:")

    mlflow.set_tracking_uri(mlflow_server)
    experiment = mlflow.get_experiment_by_name("t-kfp")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    assert len(parents) == 2
    # One finished MLflow run per task of the compiled pipeline, in each run (each loop body once per item:
    # two score parts, two trial rows); planning the parts runs no stage.
    from kfp import compiler

    compiler.Compiler().compile(dldc_pipeline, package_path=str(tmp_path / "p.yaml"))
    tasks = kfp_tasks(next(yaml.safe_load_all((tmp_path / "p.yaml").read_text())))
    names = {"score_part": "score", "gather_scores": "gather_scores", "plan_parts": None}
    # Branches this run does not take: a given dataset's ingest, a named base, proxy selection, the clean-only end.
    skipped = {"ingest-2", "name-base", "select-2", "select-3", "export-dataset-2", "report-2"}
    ran = [task for task in tasks if task not in skipped]
    expected = [names.get(base, stage_of(base)) for task in ran if (base := task.replace("-", "_"))]
    expected = [name for name in expected if name] + ["score", "select_trial"]  # the second part and trial row
    for parent in parents:
        group = parent.data.tags[GROUP_TAG]
        stages = [r for r in runs if r.data.tags.get(ROLE_TAG) == "stage" and r.data.tags.get(GROUP_TAG) == group]
        assert sorted(r.info.run_name for r in stages) == sorted(expected)
        assert all(r.info.status == "FINISHED" for r in stages)
    assert {stage_of(name) for name in expected} == {stage_of(name) for name in dvc_stages()} | {"export_scorer"}

    # The champion as a user loads it: pyfunc over HTTP, in a fresh process, one PNG per prompt.
    load = (
        "import io, sys, mlflow, numpy as np; from PIL import Image; mlflow.set_tracking_uri(sys.argv[1]); "
        "model = mlflow.pyfunc.load_model('models:/t-kfp-lora@champion'); "
        "pngs = model.predict(['farmland beside a forest'], params={'num_inference_steps': 2}); "
        "image = np.asarray(Image.open(io.BytesIO(pngs[0]))); "
        "print('GENERATED', len(pngs), image.ndim, image.shape[-1], image.dtype)"
    )
    out = subprocess.run([sys.executable, "-c", load, mlflow_server], check=True, capture_output=True, text=True)
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("GENERATED")]
    assert line == "GENERATED 1 3 3 uint8"  # one RGB image (height x width x 3, uint8) for one prompt
