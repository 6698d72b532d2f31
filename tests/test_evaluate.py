"""`dldc evaluate` end to end on tiny inputs: known answers, protocol records, bad inputs, CLI.

The "generated" images are real test images blended with noise (tests/eval_fixtures.py): an arm
with noise 0 is an exact copy of the real set, so its Fréchet distance is 0 and its prompt scores
equal the real reference; more noise moves an arm further from the real images.
"""

import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import SCENES, make_manifest, train_tiny_scorer, write_generations  # noqa: E402

from dldc.cli import main  # noqa: E402
from dldc.config import EvaluateConfig  # noqa: E402
from dldc.evaluate import evaluate_generations  # noqa: E402
from dldc.evaluate.generations import read_generations, real_images  # noqa: E402
from dldc.evaluate.inception import INCEPTION_URLS, InceptionWeightsMissing, load_inception  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions on a busy 2-core machine run several times faster single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evaluate")
    manifest = make_manifest(base)
    scorer = train_tiny_scorer(manifest, base / "scorer")
    arms = {"base": 0.8, "raw": 0.5, "clean": 0.2}
    generations = write_generations(base / "generations", manifest, arms, seeds=(0, 1), captions_per_image=2)
    return {"base": base, "manifest": manifest, "scorer": scorer, "generations": generations}


def eval_cfg(scorer: Path, **overrides) -> EvaluateConfig:
    spec = f"indomain:{scorer}"
    settings = {
        "feature_scorers": {"indomain": spec},
        "clip_scorers": {"indomain": spec},
        "bootstrap": 40,
        "kid_subsets": 10,
        "device": "cpu",
        "workers": 0,
    }
    return EvaluateConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def evaluated(project):
    out = project["base"] / "evaluation"
    return evaluate_generations([project["generations"]], project["manifest"], out, eval_cfg(project["scorer"]))


def test_outputs_and_protocol_records(evaluated, project):
    out = project["base"] / "evaluation"
    for name in ("results.json", "results.md", "metrics.parquet", "per_image.parquet", "bootstrap.parquet",
                 "evaluate.json"):  # fmt: skip
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    table = pd.read_parquet(out / "metrics.parquet")
    metrics = {"FD-indomain", "FD-indomain-intra", "KD-indomain", "CLIPScore-indomain", "cos-indomain"}
    assert set(table["metric"]) == metrics
    assert set(table.loc[table["metric"] == "FD-indomain-intra", "scene"]) == {"all"}
    assert set(table["scene"]) == {"all", *SCENES}
    assert set(table["arm"]) == {"base", "raw", "clean", "real"}
    overall = table[table["scene"] == "all"]
    fd = overall[overall["metric"] == "FD-indomain"].set_index("arm")
    # Every number carries N, feature dimension, resolution and resize path.
    assert (fd["n_real"] == 20).all() and (fd["n_generated"] == 80).all()
    assert (fd["feature_dim"] == 32).all() and (fd["spaces"] == 2).all()
    assert (overall["resolution"] == "32x32").all()
    assert overall["resize"].str.contains("PIL bicubic").all()
    assert results["protocol"]["paired"] is True and results["protocol"]["warnings"] == []
    assert results["extractors"]["FD-indomain"]["feature_dim"] == 32
    assert results["scorers"]["indomain"]["crossfit"].startswith("fold model of the source")
    # Intervals: bootstrap for FD and scores, subset spread for KD.
    kd = overall[overall["metric"] == "KD-indomain"]
    assert (kd["ci_method"] == "subsets").all() and (kd["std"] >= 0).all()
    assert (fd["ci_low"] <= fd["value"]).all() and (fd["value"] <= fd["ci_high"]).all()
    markdown = (out / "results.md").read_text()
    assert "FD-indomain" in markdown and "FID" not in markdown  # never called FID
    assert "## Per scene" in markdown and "Change vs. `base`" in markdown
    summary = json.loads((out / "evaluate.json").read_text())
    assert set(summary["arms"]) == {"base", "raw", "clean", "real"}
    assert summary["relative_change_vs_base_pct"]["clean"]["FD-indomain"] < 0
    per_image = pd.read_parquet(out / "per_image.parquet")
    assert len(per_image[per_image["arm"] != "real"]) == 240
    clip = per_image["CLIPScore-indomain"]
    assert np.allclose(clip, 100 * np.maximum(per_image["cos-indomain"], 0))


def test_less_noise_is_closer_to_the_real_images(evaluated):
    fd = {arm: evaluated.value(arm, "FD-indomain") for arm in ("base", "raw", "clean")}
    assert fd["clean"] < fd["raw"] < fd["base"]
    comparison = evaluated.compare("clean", "base", "FD-indomain")
    assert comparison["better"] and comparison["ci_high"] < 0  # paired interval excludes 0
    row = evaluated.table.query("scene == 'all' and arm == 'clean' and metric == 'FD-indomain'").iloc[0]
    assert row["rel_change_pct"] == pytest.approx(100 * (fd["clean"] - fd["base"]) / fd["base"])
    assert row["rel_ci_high_pct"] < 0


def test_intra_scene_fd_is_the_mean_of_the_scenes_fd(evaluated):
    table = evaluated.table
    for arm in ("base", "raw", "clean"):
        per_scene = table.query("arm == @arm and metric == 'FD-indomain' and scene != 'all'")["value"]
        assert len(per_scene) == len(SCENES)
        assert evaluated.value(arm, "FD-indomain-intra") == pytest.approx(per_scene.mean())
    comparison = evaluated.compare("clean", "base", "FD-indomain-intra")
    assert comparison["better"] and comparison["ci_low"] <= comparison["delta"] <= comparison["ci_high"]
    row = table.query("scene == 'all' and arm == 'clean' and metric == 'FD-indomain-intra'").iloc[0]
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and not row["higher_is_better"]


def test_an_exact_copy_has_zero_distance_and_the_reference_score(project, tmp_path):
    generations = write_generations(tmp_path / "copy", project["manifest"], {"base": 0.0, "noisy": 0.6})
    cfg = eval_cfg(project["scorer"], bootstrap=5, per_scene=False)
    result = evaluate_generations([generations], project["manifest"], "", cfg)
    again = evaluate_generations([generations], project["manifest"], "", cfg)
    pd.testing.assert_frame_equal(again.table, result.table)  # same inputs, same numbers
    assert result.out is None
    # Equal up to float32 rounding of embeddings computed in differently composed batches.
    assert result.value("base", "FD-indomain") < 1e-6 * result.value("noisy", "FD-indomain")
    for metric in ("CLIPScore-indomain", "cos-indomain"):
        assert result.value("base", metric) == pytest.approx(result.value("real", metric), rel=1e-5)


def test_arms_with_different_keys_are_evaluated_unpaired_with_a_warning(project, tmp_path):
    base = write_generations(tmp_path / "a", project["manifest"], {"base": 0.6}, seeds=(0,))
    other = write_generations(tmp_path / "b", project["manifest"], {"more": 0.3}, seeds=(0, 1))
    cfg = eval_cfg(project["scorer"], bootstrap=5, per_scene=False, kid_subsets=2)
    result = evaluate_generations([base, other], project["manifest"], "", cfg)
    protocol = result.results["protocol"]
    assert protocol["paired"] is False and "not fully paired" in protocol["warnings"][0]
    fd = result.table.query("metric == 'FD-indomain'").set_index("arm")
    assert fd.loc["base", "n_generated"] == 20 and fd.loc["more", "n_generated"] == 40
    assert np.isfinite(fd[["value", "ci_low", "ci_high"]].to_numpy()).all()


def _rewrite(folder: Path, change) -> Path:
    frame = pd.read_parquet(folder / "generations.parquet")
    change(frame).to_parquet(folder / "generations.parquet")
    return folder


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda f: f.drop(columns=["prompt"]), ValueError, r"lacks columns \['prompt'\]"),
        (lambda f: f.assign(arm="real"), ValueError, "reserved"),
        (lambda f: pd.concat([f, f.assign(gen_id=f.gen_id + "x")]), ValueError, "must be unique"),
        (lambda f: f.assign(path="../../etc/passwd"), ValueError, "not inside"),
        (lambda f: f.assign(path="images/none.png"), FileNotFoundError, "missing"),
        (lambda f: f.assign(height=f.height.where(f.index > 0, 64)), ValueError, "several resolutions"),
    ],
)
def test_bad_generations_are_explained(project, tmp_path, change, error, message):
    folder = write_generations(tmp_path / "g", project["manifest"], {"base": 0.5})
    with pytest.raises(error, match=message):
        read_generations([_rewrite(folder, change)])


def test_bad_references_are_explained(project, tmp_path):
    folder = write_generations(tmp_path / "train", project["manifest"], {"base": 0.5}, split="train")
    with pytest.raises(ValueError, match="not in the 'test' split"):
        real_images(project["manifest"], read_generations([folder]))
    folder = _rewrite(write_generations(tmp_path / "u", project["manifest"], {"base": 0.5}),
                      lambda f: f.assign(image_id="0" * 16))  # fmt: skip
    with pytest.raises(ValueError, match="not in"):
        real_images(project["manifest"], read_generations([folder]))
    with pytest.raises(ValueError, match="appears in"):
        read_generations([project["generations"], shutil.copytree(project["generations"], tmp_path / "g2")])


def test_wrong_size_and_unknown_base_arm(project, tmp_path):
    folder = write_generations(tmp_path / "g", project["manifest"], {"base": 0.5, "raw": 0.4})
    cfg = eval_cfg(project["scorer"], bootstrap=0, per_scene=False)
    with pytest.raises(ValueError, match="base arm 'pretrained'"):
        evaluate_generations([folder], project["manifest"], "", cfg.model_copy(update={"base_arm": "pretrained"}))
    first = pd.read_parquet(folder / "generations.parquet")["path"].iloc[0]
    Image.new("RGB", (16, 16)).save(folder / first)
    with pytest.raises(ValueError, match="is 16x16, but its row says 32x32"):
        evaluate_generations([folder], project["manifest"], "", cfg)


def test_missing_inception_weights_say_what_to_do(tmp_path):
    path = tmp_path / "models" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(InceptionWeightsMissing) as info:
        load_inception(path)
    message = str(info.value)
    assert str(path) in message and INCEPTION_URLS[0] in message and "evaluate.inception_weights" in message


def random_inception_weights(path: Path) -> Path:
    """A state dict of torch-fidelity's Inception network with random weights (no download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    cls = fidelity.FeatureExtractorInceptionV3
    with (
        mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {}),
        mock.patch.object(cls, "load_state_dict", lambda self, state, *args, **kwargs: None),
    ):
        torch.manual_seed(0)
        model = cls("inception-v3-compat", ["2048"])
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_fid_with_the_inception_network(project, tmp_path):
    weights = random_inception_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_inception(tmp_path / "bad.pth")
    generations = write_generations(tmp_path / "g", project["manifest"], {"base": 0.0, "noisy": 0.7})
    frame = pd.read_parquet(generations / "generations.parquet")
    # Three images per arm keep the 299-px network cheap on a CPU.
    keep = frame[frame["image_id"].isin(sorted(frame["image_id"].unique())[:3])]
    keep.to_parquet(generations / "generations.parquet")
    cfg = EvaluateConfig(
        fid=True, inception_weights=str(weights), feature_scorers={}, clip_scorers={}, bootstrap=0,
        per_scene=False, kid_subsets=2, device="cpu", workers=0,
    )  # fmt: skip
    result = evaluate_generations([generations], project["manifest"], tmp_path / "out", cfg)
    assert set(result.table["metric"]) == {"FID", "KID"}
    assert result.value("base", "FID") == pytest.approx(0.0, abs=1e-6)
    assert result.value("noisy", "FID") > 0
    extractor = result.results["extractors"]["FID"]
    assert extractor["feature_dim"] == 2048 and "299x299" in extractor["input"]
    assert extractor["weights_sha256"] and extractor["extractor_id"].startswith("inception-2015-12-05:")
    assert (result.table["n_real"] == 3).all()


def test_cli_evaluate_then_promote(project, tmp_path, mlflow_uri):
    adapters = {}
    for arm in ("raw", "clean"):
        folder = tmp_path / "adapters" / arm
        folder.mkdir(parents=True)
        weights = {"lora.weight": torch.full((2, 2), float(len(arm)))}
        save_file(weights, str(folder / "pytorch_lora_weights.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "manifest": str(project["manifest"])}))
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "optimizer.safetensors").write_bytes(b"not registered")
        adapters[arm] = str(folder)
    generations = write_generations(
        tmp_path / "g", project["manifest"], {"base": 0.8, "raw": 0.5, "clean": 0.2}, adapters=adapters
    )
    spec = f"indomain:{project['scorer']}"
    settings = [
        "-S", f"tracking.uri={mlflow_uri}",
        "-S", "tracking.experiment=test-evaluate",
        "-S", f"evaluate.feature_scorers={{indomain: '{spec}'}}",
        "-S", f"evaluate.clip_scorers={{indomain: '{spec}'}}",
        "-S", "evaluate.kid_subsets=5",
        "-S", "evaluate.device=cpu",
        "-S", "registry.model_name=test-evaluate-lora",
    ]  # fmt: skip
    runner = CliRunner()
    out = tmp_path / "evaluation"
    result = runner.invoke(
        main,
        [*settings, "--no-progress", "evaluate", "--generations", str(generations), "--manifest",
         str(project["manifest"]), "--out", str(out), "--bootstrap", "20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "clean: FD-indomain" in result.output and "%" in result.output
    # The gate also asks the candidate to beat the raw arm of the same evaluation, with the paired
    # interval clear of zero: FD-indomain is (clean 0.2 vs raw 0.5 noise), CLIPScore-indomain is not.
    result = runner.invoke(main, [*settings, "promote", "--evaluation", str(out), "--out", str(tmp_path / "p0")])
    assert result.exit_code == 0, result.output
    gated = json.loads((tmp_path / "p0" / "decision.json").read_text())
    assert gated["outcome"] == "rejected" and "not the baselines" in gated["reason"]
    by_metric = {c["metric"]: c for c in gated["baselines"] if c["baseline"] == "raw"}
    assert by_metric["FD-indomain"]["passed"] and by_metric["FD-indomain"]["ci_high"] < 0
    assert not by_metric["CLIPScore-indomain"]["interval_clear"]
    assert [c["passed"] for c in gated["baselines"] if c["baseline"] == "global"] == [None]  # no such arm
    result = runner.invoke(
        main,
        [*settings, "-S", "promote.baselines=[]", "promote", "--evaluation", str(out),
         "--out", str(tmp_path / "promote")],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    decision = json.loads((tmp_path / "promote" / "decision.json").read_text())
    assert decision["outcome"] == "promoted" and "first candidate" in decision["reason"]
    assert decision["candidate"]["data"]["manifest"] == str(project["manifest"])
    assert decision["candidate"]["data"]["manifest_sha256"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    champion = client.get_model_version_by_alias("test-evaluate-lora", "champion")
    assert champion.tags["arm"] == "clean" and float(champion.tags["eval.FD-indomain"]) > 0
    # Registered as an MLflow model holding only the adapter's files (no checkpoints).
    model = Path(mlflow.artifacts.download_artifacts(champion.source, dst_path=str(tmp_path / "dl")))
    assert (model / "MLmodel").is_file()
    files = sorted(f.name for f in (model / "adapter_weights").iterdir())
    assert files == ["adapter_config.json", "pytorch_lora_weights.safetensors"]

    # A worse candidate evaluated beside the champion (same evaluation, arm "clean") is not promoted.
    result = runner.invoke(
        main,
        [*settings, "promote", "--evaluation", str(out), "--candidate-arm", "raw", "--out", str(tmp_path / "p2")],
    )
    assert result.exit_code == 0, result.output
    decision = json.loads((tmp_path / "p2" / "decision.json").read_text())
    assert decision["outcome"] == "rejected"
    assert decision["champion_before"]["metrics_source"] == "this evaluation, arm 'clean'"
    assert client.get_model_version_by_alias("test-evaluate-lora", "champion").version == champion.version


def test_components_compile(tmp_path):
    from kfp import compiler, dsl

    from components.evaluate import evaluate
    from components.promote import promote

    @dsl.pipeline(name="evaluate-promote")
    def wiring(settings: list = []):  # noqa: B006 - KFP reads the default
        generations = dsl.importer(artifact_uri="file:///g", artifact_class=dsl.Dataset)
        manifest = dsl.importer(artifact_uri="file:///m", artifact_class=dsl.Dataset)
        scorer = dsl.importer(artifact_uri="file:///s", artifact_class=dsl.Model)
        adapter = dsl.importer(artifact_uri="file:///a", artifact_class=dsl.Model)
        task = evaluate(generations=generations.output, manifest=manifest.output, scorer=scorer.output,
                        settings=settings, profile="demo")  # fmt: skip
        promote(evaluation=task.outputs["evaluation"], adapter=adapter.output, candidate_arm="clean",
                settings=settings, profile="demo")  # fmt: skip

    compiler.Compiler().compile(wiring, package_path=str(tmp_path / "p.yaml"))
    text = (tmp_path / "p.yaml").read_text()
    assert "evaluate.feature_scorers.indomain=indomain:" in text and "--candidate-arm" in text
