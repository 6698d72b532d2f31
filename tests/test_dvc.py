"""`dvc repro` runs the stages from dvc.yaml; a second run has nothing to do."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from stage_graph import dvc_stages  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dvc_repro_runs_then_is_up_to_date(tmp_path, mlflow_uri, tiny_base):
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    shutil.copytree(REPO / "dldc", work / "dldc", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["synth"].update(n_images=100, size=32)  # 10 per scene: generation needs test-split images
    params["indomain"].update(architecture="indomain-test", folds=2, epochs=1, batch_size=32)
    params["caption"].update(rounds=1)
    params["base"].update(tiny_base)
    params["finetune"].update(resolution=16, rank=4, steps=2, batch_size=4, checkpoint_every=1, sample_steps=1)
    params["generate"].update(steps=1, batch_size=8, prompts_per_image=1)
    params["select"].update(grid=[0.0, 0.3], trial_steps=2, trial_generate_steps=1, trial_prompts_per_image=1)
    params["evaluate"].update(bootstrap=10, kid_subsets=2, kid_subset_size=4)
    params["segment"].update(patch_size=32, widths=[4, 8], steps=2, batch_size=4, eval_every=1, checkpoint_every=1,
                             synthetic_per_arm=4, gen_steps=1, bootstrap=10)
    params["tracking"]["uri"] = mlflow_uri
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    dvc("init", "--no-scm", "-q")
    first = dvc("repro")
    stages = dvc_stages(work / "dvc.yaml", params)
    for stage in stages:
        assert f"Running stage '{stage}'" in first
    assert (work / "data" / "ingest" / "manifest.parquet").is_file()
    assert (work / "data" / "scores" / "scores.parquet").is_file()
    assert (work / "data" / "captions" / "manifest.parquet").is_file()
    assert (work / "data" / "generate" / "generations.parquet").is_file()
    segment = json.loads((work / "data" / "segment" / "results.json").read_text())
    assert set(segment["runs"]) == {"real"} | {f"{p}/{a}" for p in ("pseudo-label", "layout-prompt")
                                             for a in ("base", "raw", "clean")}
    selection = yaml.safe_load((work / "data" / "select" / "selection.json").read_text())
    assert selection["mode"] == "loop" and set(selection["trials"]) == {"0", "0.3"}
    assert (work / "data" / "select" / "trials" / "r0.3" / "trial.json").is_file()
    exported = json.loads((work / "data" / "cleaned" / "export.json").read_text())
    assert exported["format"] == "karpathy" and exported["counts"]["kept"] == selection["pairs"]["kept"]
    finetuned = yaml.safe_load((work / "data" / "finetune" / "clean" / "finetune.json").read_text())
    assert finetuned["manifest"] == "data/select/cleaned_manifest.parquet"
    assert "up to date" in dvc("repro")
    assert "up to date" in dvc("status")
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    # Every stage's figures are flat numbers: what `dvc metrics show` and `dvc exp show` list.
    shown = json.loads(dvc("metrics", "show", "--json"))
    (figures,) = [entry["data"] for entry in shown.values()]
    for path, entry in figures.items():
        assert path.endswith("metrics.json") and entry["data"], path
        assert all(isinstance(v, (int, float)) for v in entry["data"].values()), path
    # A changed score setting re-runs `score` (and `caption`, which reads the score settings); the
    # embedding store spares re-encoding, and outputs that come out the same stop the chain there.
    params["score"]["batch_size"] = 7
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = dvc("repro")
    assert "Running stage 'score'" in rerun and "Running stage 'train_scorer'" not in rerun
    assert "Running stage 'select_trial" not in rerun and "Running stage 'finetune" not in rerun
    report = yaml.safe_load((work / "data" / "scores" / "score.json").read_text())
    assert report["images_encoded"] == 0 and report["texts_encoded"] == 0
