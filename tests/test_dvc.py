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


def _use_demo_remote(folder: Path) -> None:
    """The repository's default remote (.dvc/config: a folder beside the checkout) in a `dvc init --no-scm` copy."""
    config = (REPO / ".dvc" / "config").read_text()
    with (folder / ".dvc" / "config").open("a") as handle:
        handle.write("\n" + config[config.index("['remote"):])
    subprocess.run(["dvc", "config", "core.remote", "local"], cwd=folder, check=True)


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
    params["select"].update(grid=[0.0, 0.3], trial_steps=2, trial_generate_steps=1, trial_prompts_per_image=1,
                            calibrate_levels=[0.0, 1.0], rows=[0, 1, 2], proxy_bootstrap=20)
    params["evaluate"].update(bootstrap=10, kid_subsets=2, kid_subset_size=4)
    params["segment"].update(patch_size=32, widths=[4, 8], steps=2, batch_size=4, eval_every=1, checkpoint_every=1,
                             synthetic_per_arm=4, gen_steps=1, bootstrap=10)
    params["tracking"]["uri"] = mlflow_uri
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    dvc("init", "--no-scm", "-q")
    _use_demo_remote(work)
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
    assert selection["mode"] == "calibrate" and set(selection["trials"]) == {"λ=0", "λ=1"}
    assert selection["scenes"]["river"]["evidence"] == "scores+calibration(2 trials)"
    spare = json.loads((work / "data" / "select" / "trials" / "row2" / "trial.json").read_text())
    assert spare["idle"] and spare["rows"] == 2  # the third slot: the two-level plan leaves it idle
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
    # Curves: `dvc plots show` draws the fine-tuning losses and the ratio objective.
    dvc("plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    for name in ("data/finetune/raw/loss.csv", "data/finetune/clean/loss.csv", "data/select/curves.csv",
                 "histograms.png"):
        assert name in page
    # `dvc push`, then `dvc pull` into a fresh clone restores every output, byte for byte.
    dvc("push")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(work / name, fresh / name)
    shutil.copytree(work / "dldc", fresh / "dldc")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=fresh, check=True)
    _use_demo_remote(fresh)
    subprocess.run(["dvc", "pull"], cwd=fresh, check=True, capture_output=True)
    status = subprocess.run(["dvc", "status"], cwd=fresh, check=True, capture_output=True, text=True).stdout
    assert "up to date" in status, status
    for name in ("data/ingest/manifest.parquet", "data/cleaned/export.json", "data/select/metrics.json",
                 "data/finetune/clean/pytorch_lora_weights.safetensors", "data/report/index.html"):
        assert (fresh / name).read_bytes() == (work / name).read_bytes(), name
    # A changed score setting re-runs `score` (and `caption`, which reads the score settings); the
    # embedding store spares re-encoding, and outputs that come out the same stop the chain there.
    params["score"]["batch_size"] = 7
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = dvc("repro")
    assert "Running stage 'score'" in rerun and "Running stage 'train_scorer'" not in rerun
    assert "Running stage 'select_trial" not in rerun and "Running stage 'finetune" not in rerun
    report = yaml.safe_load((work / "data" / "scores" / "score.json").read_text())
    assert report["images_encoded"] == 0 and report["texts_encoded"] == 0


def test_your_dataset_is_a_dependency_and_synth_stays_out(tmp_path):
    """ingest follows `ingest.root`: a changed caption re-runs it, an unchanged dataset runs nothing, no synth."""
    from dldc.data.synthrs import write_synthrs

    work = tmp_path / "clone"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    shutil.copytree(REPO / "dldc", work / "dldc", ignore=shutil.ignore_patterns("__pycache__"))
    write_synthrs(work / "mydata", n_images=20, size=32, seed=3, progress=False)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["ingest"].update(root="mydata", workers=1)
    params["tracking"]["enabled"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    dvc("init", "--no-scm", "-q")
    first = dvc("repro", "ingest")
    assert "Running stage 'ingest'" in first and "Running stage 'synth'" not in first
    assert "up to date" in dvc("repro", "ingest")
    annotations = work / "mydata" / "dataset_synthrs.json"
    document = json.loads(annotations.read_text())
    document["images"][0]["sentences"][0]["raw"] = "a changed caption"
    annotations.write_text(json.dumps(document))
    assert "Running stage 'ingest'" in dvc("repro", "ingest")


def test_dvc_exp_run_sets_any_setting(tmp_path):
    """`dvc exp run -S evaluate.fid=true` works: every setting is spelled out in params.yaml."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    # A one-stage pipeline that reads the evaluate section, so no stage of the demo has to run.
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  show:\n    cmd: python -c \"import yaml; print(yaml.safe_load(open('params.yaml'))['evaluate']"
        "['fid'], file=open('fid.txt', 'w'))\"\n    params: [evaluate]\n    outs: [fid.txt]\n"
    )

    def run(*command):
        return subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git = ("git", "-c", "user.email=ci@dldc", "-c", "user.name=ci")
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("git", "add", "-A")
    run(*git, "commit", "-qm", "init")
    run("dvc", "exp", "run", "-S", "evaluate.fid=true")
    assert (tmp_path / "fid.txt").read_text().strip() == "True"
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["evaluate"]["fid"] is True
