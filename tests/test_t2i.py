"""T2I: tokenizer, build-base, LoRA fine-tuning (adapter format, resume), generation (contract, seeds, resume).

Everything runs on tiny Stable-Diffusion-architecture models saved with ``save_pretrained`` and
loaded back through the same code as a hub id (``dldc.t2i.models``); nothing is downloaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dldc.config import BaseConfig, FinetuneConfig, GenerateConfig, load_config
from dldc.t2i.finetune import (
    ADAPTER_FILE,
    REPORT_FILE,
    finetune,
    pair_hashes,
    paired_indices,
    sample_indices,
    step_seed,
)
from dldc.t2i.generate import generate_images, select_prompts
from dldc.t2i.models import load_pipeline, name_base, resolve_base, save_dummy_base

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_manifest, train_tiny_scorer  # noqa: E402

# The file contract of `dldc generate` (what `dldc evaluate` reads), as Parquet types.
SCHEMA = {
    "gen_id": "string",
    "image_id": "string",
    "pair_id": "string",
    "scene": "string",
    "prompt": "string",
    "seed": "int64",
    "path": "string",
    "arm": "string",
    "model": "string",
    "adapter": "string",
    "guidance_scale": "double",
    "steps": "int64",
    "height": "int64",
    "width": "int64",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("t2i")


@pytest.fixture(scope="module")
def manifest(workdir: Path) -> Path:
    """20 SynthRS images (4 scenes, 2 captions each, half in the test split) at 16 px."""
    return make_manifest(workdir / "data", n_images=20, size=16)


@pytest.fixture(scope="module")
def base(workdir: Path) -> str:
    """A randomly initialised 8 px Stable Diffusion pipeline folder (the stand-in for a hub id)."""
    return str(save_dummy_base(workdir / "base"))


def _finetune_cfg(base: str, manifest: Path, out: Path, **overrides: object) -> FinetuneConfig:
    settings = {
        "base": base,
        "manifest": str(manifest),
        "out": str(out),
        "resolution": 8,
        "rank": 4,
        "alpha": 8.0,
        "steps": 6,
        "batch_size": 4,
        "lr": 5e-2,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "sample_steps": 2,
        "device": "cpu",
        **overrides,
    }
    return FinetuneConfig(**settings)


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_clip_tokenizer_matches_open_clip(tmp_path: Path) -> None:
    import open_clip
    from transformers import CLIPTokenizer

    from dldc.t2i.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(tmp_path)
    assert {"vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    ours = CLIPTokenizer.from_pretrained(str(tmp_path))
    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in ["An aerial image of a FARMLAND with 17 crop-fields!", "still water of a lake at the top left"]:
        ids = ours(text).input_ids
        assert ids == reference([text])[0].tolist()[: len(ids)]
    assert len(ours) == 49408 and ours.model_max_length == 77 and ours.pad_token == "<|endoftext|>"


def test_build_base_saves_a_loadable_pipeline_and_checks_scenes(
    manifest: Path, workdir: Path, tmp_path: Path, tiny_base: Mapping[str, Any]
) -> None:
    from dldc.t2i.base import build_base

    scorer = train_tiny_scorer(manifest, workdir / "scorer", folds=2, epochs=1)
    cfg = BaseConfig(
        # The shared toy base, with a first UNet block without cross-attention.
        **{**tiny_base, "unet_cross_attention": [False, True], "text_batch": 8},
        out=str(tmp_path / "model"),
        data=str(tmp_path / "data"),
        check_scorer=str(scorer),
        device="cpu",
    )
    report = build_base(cfg, progress=False)
    assert report["data"]["images"] == 80  # the pretraining split's train images (10 scenes x 8)
    trained_on = pd.read_parquet(report["manifest"])  # scene-level alt texts, the generic-model stand-in
    assert trained_on["caption"].str.contains("|".join(trained_on["scene"].str.split().str[0].unique())).all()
    assert report["latent"]["size"] == 8 and report["latent"]["scaling_factor"] > 0
    check = report["scene_check"]
    assert check["chance"] == 0.1 and check["prompts"] == 10
    for key in ("generated", "ceiling", "generated_sharp_centroids", "real"):
        assert 0.0 <= check[key]["accuracy"] <= 1.0
    assert (Path(cfg.out) / "samples.png").is_file() and (Path(cfg.out) / "base.json").is_file()
    pipe = load_pipeline(cfg.out)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert (Path(cfg.out) / "tokenizer" / "vocab.json").is_file()
    image = pipe("a lake", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)
    # The pretraining split is reused when its parameters are unchanged.
    stamp = (Path(cfg.data) / "synthrs" / "synthrs.json").stat().st_mtime_ns
    build_base(cfg.model_copy(update={"check_scorer": None}), progress=False)
    assert (Path(cfg.data) / "synthrs" / "synthrs.json").stat().st_mtime_ns == stamp


def test_missing_base_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dldc build-base"):
        load_pipeline(str(tmp_path / "nope"))


def test_sample_indices_are_position_determined() -> None:
    whole = sample_indices(10, 25, 0, seed=3)
    assert sorted(whole[:10].tolist()) == list(range(10))  # an epoch sees every pair once
    assert torch.equal(whole[12:20], sample_indices(10, 8, 12, seed=3))


def test_paired_indices_are_uniform_and_coupled_across_nested_subsets() -> None:
    hashes = pair_hashes([f"{i:04x}:{i % 5}" for i in range(40)])
    seeds = [step_seed(3, step, 0) for step in range(200)]
    draws = np.concatenate([paired_indices(hashes, 50, seed).numpy() for seed in seeds])
    counts = np.bincount(draws, minlength=40)
    assert counts.min() > 0.7 * 250 and counts.max() < 1.3 * 250  # 10,000 draws, 250 expected per pair
    kept = np.arange(40)[np.arange(40) % 4 != 0]  # drop a quarter of the pairs
    same = []
    for seed in seeds:
        full = paired_indices(hashes, 50, seed).numpy()
        sub = kept[paired_indices(hashes[kept], 50, seed).numpy()]
        in_subset = np.isin(full, kept)
        assert np.array_equal(sub[in_subset], full[in_subset])  # a kept pair stays in its slot
        same.append(in_subset.mean())
    assert abs(np.mean(same) - 0.75) < 0.02  # P(same pair) = |subset| / |set|, the most two uniform draws can share
    assert torch.equal(paired_indices(hashes, 8, 7), paired_indices(hashes, 8, 7))


def test_finetune_adapter_loads_with_diffusers_and_changes_outputs(base: str, manifest: Path, workdir: Path) -> None:
    out = workdir / "lora-te"
    report = finetune(_finetune_cfg(base, manifest, out, text_encoder_lora=True), progress=False)
    adapter = out / ADAPTER_FILE
    assert adapter.is_file() and (out / REPORT_FILE).is_file() and (out / "samples.png").is_file()
    assert not (out / "checkpoints").exists()  # the finished adapter supersedes them
    keys = load_file(str(adapter)).keys()
    assert any(k.startswith("unet.") and "lora" in k for k in keys)
    assert any(k.startswith("text_encoder.") and "lora" in k for k in keys)
    with safe_open(str(adapter), "pt") as handle:
        assert "lora_adapter_metadata" in handle.metadata()  # rank and alpha travel with the weights
    frame = pd.read_parquet(manifest)
    assert report["data"]["pairs"] == (frame.split == "train").sum() and report["throughput"]["images_per_s"] > 0

    # The same settings, data and base again: the finished adapter is kept, nothing is retrained.
    stamp = adapter.stat().st_mtime_ns
    assert finetune(_finetune_cfg(base, manifest, out, text_encoder_lora=True), progress=False) == report
    assert adapter.stat().st_mtime_ns == stamp
    # Another setting retrains (and another sampler draws other batches).
    other = finetune(_finetune_cfg(base, manifest, workdir / "lora-epoch", text_encoder_lora=True, sampler="epoch"),
                     progress=False)
    assert other["fingerprint"] != report["fingerprint"] and other["final_loss"] != report["final_loss"]

    pipe = load_pipeline(base)
    kwargs = {"num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "np"}
    before = pipe("a forest", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(out))
    after = pipe("a forest", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(after - before).max() > 1e-3
    pipe.unload_lora_weights()
    again = pipe("a forest", generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(again, before, atol=1e-6)


def test_killed_finetune_resumes_to_the_uninterrupted_weights(base: str, manifest: Path, workdir: Path) -> None:
    settings = {"dropout": 0.1, "noise_offset": 0.05, "grad_accum": 2, "sample_steps": 0}
    whole = _finetune_cfg(base, manifest, workdir / "whole", **settings)
    finetune(whole, progress=False)
    killed = _finetune_cfg(base, manifest, workdir / "killed", **settings)
    stopped = finetune(killed, progress=False, stop_after=3)  # "killed" after step 3; checkpoint at 2
    assert stopped["stopped_at"] == 3 and not (workdir / "killed" / ADAPTER_FILE).exists()
    report = finetune(killed, progress=False)
    assert report["resumed_from"] == [2]
    expected, resumed = (
        load_file(str(workdir / "whole" / ADAPTER_FILE)),
        load_file(str(workdir / "killed" / ADAPTER_FILE)),
    )
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key  # bit-identical on the CPU


def test_checkpoints_of_other_settings_are_not_resumed(base: str, manifest: Path, workdir: Path) -> None:
    out = workdir / "changed"
    finetune(_finetune_cfg(base, manifest, out, sample_steps=0), progress=False, stop_after=2)
    report = finetune(_finetune_cfg(base, manifest, out, sample_steps=0, lr=1e-2), progress=False)
    assert report["resumed_from"] == []


def test_generate_contract_seeds_and_resume(base: str, manifest: Path, workdir: Path) -> None:
    adapter = workdir / "lora-te"
    if not (adapter / ADAPTER_FILE).is_file():
        finetune(_finetune_cfg(base, manifest, adapter, text_encoder_lora=True), progress=False)
    cfg = GenerateConfig(
        base=base,
        arms={"base": "", "clean": str(adapter)},
        manifest=str(manifest),
        out=str(workdir / "gen"),
        steps=2,
        batch_size=3,
        device="cpu",
    )
    result = generate_images(cfg, progress=False)
    assert {field.name: str(field.type) for field in pq.read_schema(result.table)} == SCHEMA
    table = pd.read_parquet(result.table)
    prompts = select_prompts(str(manifest), "test", None, 1, 0)
    frame = pd.read_parquet(manifest)
    assert len(table) == 2 * len(prompts) == 2 * (frame.split == "test").sum()  # every test caption, two arms
    assert table["gen_id"].is_unique and set(table["arm"]) == {"base", "clean"}
    by_arm = {arm: rows.set_index("pair_id") for arm, rows in table.groupby("arm")}
    pd.testing.assert_series_equal(by_arm["base"]["seed"], by_arm["clean"]["seed"])  # same seeds every arm
    assert set(table.loc[table.arm == "base", "adapter"]) == {""}
    assert (table["height"] == 8).all() and all((Path(cfg.out) / p).is_file() for p in table["path"])
    assert set(table["image_id"]) <= set(frame.loc[frame.split == "test", "image_id"])

    # Resume: nothing is redone; a deleted image is made again, identical (same seed, same image).
    victim = Path(cfg.out) / table["path"].iloc[5]
    original = _pixels(victim)
    victim.unlink()
    again = generate_images(cfg, progress=False)
    assert again.report["arms"]["base"]["generated"] + again.report["arms"]["clean"]["generated"] == 1
    assert np.abs(_pixels(victim) - original).max() <= 1

    # Changed settings for one arm: only that arm is redone.
    changed = generate_images(cfg.model_copy(update={"guidance_scale": 2.0}), progress=False)
    assert changed.report["arms"]["base"]["generated"] == len(prompts)


# diffusers' expected_slice check of `dldc generate`: the bottom-right 3x3 pixels (RGB) of the first image
# (by gen_id) from the 8 px dummy base (seed 0), at 16 px, 2 DPM-Solver++ steps, guidance 7.5, on the CPU.
# The same with 1, 2 and 4 torch threads. Another seed moves it by ~100 levels, guidance 4 by ~20, DDIM or
# Euler sampling by 6-10: more than the tolerance of 2 levels, which only absorbs float noise across CPUs.
EXPECTED_CORNER = [
    [[135, 141, 190], [152, 124, 164], [147, 45, 151]],
    [[86, 54, 215], [111, 180, 139], [146, 125, 147]],
    [[96, 103, 145], [127, 97, 138], [138, 140, 131]],
]


def test_generate_expected_slice(base: str, manifest: Path, tmp_path: Path) -> None:
    cfg = GenerateConfig(base=base, arms={"base": ""}, manifest=str(manifest), out=str(tmp_path), prompts_per_image=1,
                         steps=2, guidance_scale=7.5, resolution=16, batch_size=1, device="cpu")  # fmt: skip
    table = pd.read_parquet(generate_images(cfg, progress=False).table).sort_values("gen_id")
    corner = _pixels(tmp_path / table["path"].iloc[0])[-3:, -3:, :]
    assert np.abs(corner - np.array(EXPECTED_CORNER)).max() <= 2, corner.tolist()


def test_generate_refuses_a_missing_adapter(base: str, manifest: Path, tmp_path: Path) -> None:
    cfg = GenerateConfig(base=base, arms={"raw": str(tmp_path / "none")}, manifest=str(manifest), out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dldc finetune"):
        generate_images(cfg, progress=False)


def test_config_sections_and_profiles() -> None:
    demo, paper = load_config(None), load_config(None, overrides=["profile=paper"])
    assert demo.finetune.base == demo.base.out == demo.generate.base
    assert paper.finetune.base == "stable-diffusion-v1-5/stable-diffusion-v1-5" and paper.finetune.resolution == 512
    with pytest.raises(Exception, match="real"):
        load_config(None, overrides=["generate.arms={real: ''}"])


def test_finetune_stage_logs_curve_samples_and_adapter_to_mlflow(
    base: str, manifest: Path, workdir: Path, mlflow_uri: str
) -> None:
    import mlflow

    from dldc.stages import run_finetune

    out = workdir / "tracked"
    updates = {
        "tracking.uri": mlflow_uri,
        "tracking.experiment": "t2i-test",
        **{f"finetune.{k}": v for k, v in _finetune_cfg(base, manifest, out, log_every=2).model_dump().items()},
    }
    run_finetune(load_config(None, updates=updates), progress=False)
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("t2i-test")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'finetune'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4, 6]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "adapter")
    }
    assert {"samples.png", f"adapter/{ADAPTER_FILE}", f"adapter/{REPORT_FILE}"} <= logged
    assert run.data.params["rank"] == "4" and run.data.tags["manifest_sha256"]


def test_generate_cli_arms_flag(base: str, manifest: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dldc.cli import main

    args = ["--no-progress", "-S", "tracking.enabled=false", "-S", "generate.steps=1", "-S", "generate.device=cpu"]
    args += ["-S", "generate.prompts_per_image=1"]
    command = ["generate", "--base", base, "--arm", "base=", "--manifest", str(manifest), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *command])
    assert result.exit_code == 0, result.output
    assert "base: 8 new / 0 kept" in result.output or "new / 0 kept" in result.output
    assert set(pd.read_parquet(tmp_path / "generations.parquet")["arm"]) == {"base"}
    bad = CliRunner().invoke(main, [*args, "generate", "--arm", "nameless"])
    assert bad.exit_code != 0 and "NAME=ADAPTER_DIR" in bad.output


def test_sigkilled_finetune_process_resumes_to_the_same_weights(base: str, manifest: Path, workdir: Path) -> None:
    import subprocess
    import time

    import yaml

    settings = {"steps": 120, "checkpoint_every": 10, "sample_steps": 0, "batch_size": 2, "threads": 1}
    killed = _finetune_cfg(base, manifest, workdir / "sigkill", **settings)
    params = workdir / "sigkill.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"enabled": False}, "finetune": killed.model_dump(mode="json")}))
    process = subprocess.Popen([sys.executable, "-m", "dldc", "--no-progress", "--params", str(params), "finetune"])
    checkpoints = workdir / "sigkill" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*/state.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    if (workdir / "sigkill" / ADAPTER_FILE).exists():
        pytest.skip("the run finished before it could be killed (machine too fast for this test's step count)")
    report = finetune(killed, progress=False)
    assert report["resumed_from"] and report["resumed_from"][0] % 10 == 0
    whole = finetune(_finetune_cfg(base, manifest, workdir / "sigkill-whole", **settings), progress=False)
    assert whole["resumed_from"] == []
    expected = load_file(str(workdir / "sigkill-whole" / ADAPTER_FILE))
    resumed = load_file(str(workdir / "sigkill" / ADAPTER_FILE))
    assert all(torch.equal(expected[key], resumed[key]) for key in expected)


def test_a_named_base_loads_through_the_same_path(tmp_path, mlflow_uri, monkeypatch):
    """`dldc build-base --from`: the folder every task gets stands for the base it names."""
    real = save_dummy_base(tmp_path / "real").resolve()
    named = name_base(str(real), tmp_path / "named")
    assert named == {"base": str(real), "revision": None, "source": str(real)}
    assert resolve_base(str(tmp_path / "named")) == (str(real), None)
    pipe = load_pipeline(str(tmp_path / "named"))
    assert pipe.unet.config.sample_size == 4
    hub = name_base("stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe", tmp_path / "hub")
    assert resolve_base(str(tmp_path / "hub"), "main") == ("stable-diffusion-v1-5/stable-diffusion-v1-5", "451f4fe")
    assert hub["revision"] == "451f4fe"
    with pytest.raises(ValueError, match="neither a hub id"):
        name_base("relative/base/folder", tmp_path / "bad")
    # A registered model holding a pipeline folder is downloaded whole: it then loads anywhere.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run = client.create_run(client.create_experiment("t-named-base"))
    client.log_artifacts(run.info.run_id, str(real), artifact_path="pipeline")
    client.create_registered_model("tiny-base")
    client.create_model_version("tiny-base", f"{run.info.artifact_uri}/pipeline", run_id=run.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # as a pod gets it (from the tracking secret)
    fetched = name_base("models:/tiny-base/1", tmp_path / "registered")
    assert fetched["source"] == "models:/tiny-base/1" and (tmp_path / "registered" / "model_index.json").is_file()
    assert load_pipeline(str(tmp_path / "registered")).unet.config.sample_size == 4
