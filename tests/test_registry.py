"""MLflow registry and promotion: decisions with known answers, against a local SQLite MLflow."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import save_file

from dldc.config import DldcConfig, PromoteConfig, PromoteCriterion, RegistryConfig, TrackingConfig
from dldc.registry.data_version import data_version, dvc_md5, manifest_from_adapter
from dldc.registry.models import adapter_digest
from dldc.registry.promote import decide
from dldc.stages import run_promote

FD, CLIP = "FD-indomain", "CLIPScore-indomain"
CRITERIA = [PromoteCriterion(metric=FD), PromoteCriterion(metric=CLIP)]
# What an evaluation records for each metric (its `higher_is_better`).
DIRECTIONS = {FD: False, CLIP: True, "FID": False}


# --------------------------------------------------------------------------- decide (no MLflow)


def test_first_candidate_is_promoted_and_says_so():
    promoted, results, reason = decide({FD: 3.0, CLIP: 20.0}, None, CRITERIA, DIRECTIONS)
    assert promoted and "no current champion" in reason and "first candidate" in reason
    assert all(r.passed and r.note == "no champion" for r in results)


def test_directions_and_margins():
    champion = {FD: 10.0, CLIP: 20.0, "FID": 50.0}
    # Lower FD and higher CLIP are better.
    assert decide({FD: 9.0, CLIP: 21.0}, champion, CRITERIA, DIRECTIONS)[0]
    assert not decide({FD: 11.0, CLIP: 21.0}, champion, CRITERIA, DIRECTIONS)[0]
    assert not decide({FD: 9.0, CLIP: 19.0}, champion, CRITERIA, DIRECTIONS)[0]
    # Ties do not promote.
    promoted, results, reason = decide({FD: 10.0, CLIP: 21.0}, champion, CRITERIA, DIRECTIONS)
    assert not promoted and not results[0].passed and "FD-indomain" in reason and "FAILED" in reason
    # Relative margin: 10% of 50 = 5 FID points; absolute margin: 1 CLIP point.
    criteria = [PromoteCriterion(metric="FID", margin=0.1), PromoteCriterion(metric=CLIP, margin=1.0, relative=False)]
    assert not decide({"FID": 46.0, CLIP: 22.0}, champion, criteria, DIRECTIONS)[0]  # FID only 4 better
    assert not decide({"FID": 44.0, CLIP: 21.0}, champion, criteria, DIRECTIONS)[0]  # CLIP only 1 better (needs more)
    promoted, results, _ = decide({"FID": 44.0, CLIP: 21.5}, champion, criteria, DIRECTIONS)
    assert promoted
    assert results[0].required_improvement == pytest.approx(5.0) and results[0].improvement == pytest.approx(6.0)
    # An explicit direction overrides the recorded one; `auto` needs one recorded.
    custom = {"custom": True}
    assert decide({"custom": 1.0}, {"custom": 2.0}, [PromoteCriterion(metric="custom", direction="lower")], custom)[0]
    assert not decide({"custom": 1.0}, {"custom": 2.0}, [PromoteCriterion(metric="custom")], custom)[0]
    with pytest.raises(ValueError, match="no direction for metric 'custom'"):
        decide({"custom": 1.0}, {"custom": 2.0}, [PromoteCriterion(metric="custom")], {})


def test_missing_values_fail_with_a_note():
    promoted, results, _ = decide({FD: float("nan"), CLIP: 30.0}, {FD: 1.0, CLIP: 20.0}, CRITERIA, DIRECTIONS)
    assert not promoted and results[0].note == "the candidate has no finite value"
    promoted, results, _ = decide({FD: 1.0, CLIP: 30.0}, {CLIP: 20.0}, CRITERIA, DIRECTIONS)
    assert not promoted and results[0].note == "the champion has no finite value"


# --------------------------------------------------------------------------- data version


def test_data_version_reads_dvc_lock(tmp_path, monkeypatch):
    manifest = tmp_path / "data" / "ingest" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"rows")
    lock = {"stages": {"ingest": {"outs": [{"path": "data/ingest", "md5": "abc.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.chdir(tmp_path)
    assert dvc_md5("data/ingest/manifest.parquet") == {"stage": "ingest", "path": "data/ingest", "md5": "abc.dir"}
    assert dvc_md5("elsewhere.parquet") is None
    version = data_version("data/ingest/manifest.parquet")
    assert version["manifest_sha256"] == hashlib.sha256(b"rows").hexdigest()
    assert version["dvc"]["md5"] == "abc.dir"
    assert version["git_rev"] is None  # not a git repository
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "finetune.json").write_text(json.dumps({"config": {"manifest": "data/clean.parquet"}}))
    assert manifest_from_adapter(tmp_path / "adapter") == "data/clean.parquet"


# --------------------------------------------------------------------------- promotion in MLflow


def make_adapter(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"unet.lora_A.weight": torch.full((4, 2), value)}, str(folder / "pytorch_lora_weights.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    return folder


def fake_evaluation(folder: Path, arms: dict[str, dict], fingerprint: str = "protocol-a") -> Path:
    """A minimal `dldc evaluate` results.json: per arm its adapter and overall metrics."""
    metrics = [
        {"scene": "all", "arm": arm, "metric": name, "value": value, "higher_is_better": DIRECTIONS[name]}
        for arm, info in arms.items()
        for name, value in info["metrics"].items()
    ]
    results = {
        "protocol": {"fingerprint": fingerprint},
        "arms": {arm: {"adapter": info.get("adapter", ""), "model": "tiny-sd"} for arm, info in arms.items()},
        "metrics": metrics,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def candidate_evaluation(folder: Path, adapter: Path, fd: float, clip: float) -> Path:
    """An evaluation of the base model and one candidate arm, ``clean``."""
    arms = {
        "base": {"metrics": {FD: 9.0, CLIP: 10.0}},
        "clean": {"adapter": str(adapter), "metrics": {FD: fd, CLIP: clip}},
    }
    return fake_evaluation(folder, arms)


@pytest.fixture
def cfg_for(mlflow_uri, tmp_path, request):
    model_name = f"lora-{request.node.name}"[:60]

    def build(evaluation: Path, out: str = "promote", **promote) -> DldcConfig:
        return DldcConfig(
            tracking=TrackingConfig(uri=mlflow_uri, experiment="test-registry"),
            registry=RegistryConfig(model_name=model_name),
            promote=PromoteConfig(evaluation=str(evaluation), out=str(tmp_path / out), **promote),
        )

    return build


def client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_promotion_history(cfg_for, tmp_path, mlflow_uri):
    first = make_adapter(tmp_path / "a1", 1.0)
    cfg = cfg_for(candidate_evaluation(tmp_path / "e1", first, fd=5.0, clip=20.0))
    decision = run_promote(cfg)
    assert decision["promoted"] and decision["outcome"] == "promoted" and decision["champion_before"] is None
    assert json.loads((tmp_path / "promote" / "decision.json").read_text())["outcome"] == "promoted"
    name = cfg.registry.model_name
    champion = client(mlflow_uri).get_model_version_by_alias(name, "champion")
    tags = champion.tags
    assert tags["adapter_sha256"] == adapter_digest(first, ["*.safetensors", "*.json"])
    assert float(tags["eval.FD-indomain"]) == 5.0 and tags["eval.protocol"] == "protocol-a"
    assert tags["promotion.outcome"] == "promoted" and "first candidate" in tags["promotion.reason"]
    assert tags["arm"] == "clean" and tags["base_model"] == "tiny-sd" and tags["data.git_rev"]

    # Same adapter again: registered once, already champion.
    decision = run_promote(cfg)
    assert decision["outcome"] == "already_champion" and decision["candidate"]["version"] == champion.version

    # A worse candidate under the same protocol: compared with the champion's tags, rejected.
    second = make_adapter(tmp_path / "a2", 2.0)
    cfg2 = cfg_for(candidate_evaluation(tmp_path / "e2", second, fd=4.0, clip=19.0), out="p2")
    decision = run_promote(cfg2)
    assert decision["outcome"] == "rejected"
    assert decision["champion_before"]["version"] == champion.version
    assert decision["champion_before"]["metrics_source"].startswith("version tags")
    assert decision["champion_evidence"].startswith("point_estimates") and decision["champion_checks"] == []
    assert [c["passed"] for c in decision["criteria"]] == [True, False]
    versions = client(mlflow_uri).search_model_versions(f"name='{name}'")
    rejected = next(v for v in versions if v.version == decision["candidate"]["version"])
    assert rejected.tags["promotion.outcome"] == "rejected" and rejected.tags["promotion.compared_with"] == "1"
    assert client(mlflow_uri).get_model_version_by_alias(name, "champion").version == champion.version
    # ... but it is the challenger: the version to look at next.
    assert client(mlflow_uri).get_model_version_by_alias(name, "challenger").version == rejected.version

    # A better one by more than the margins: promoted.
    third = make_adapter(tmp_path / "a3", 3.0)
    criteria = [PromoteCriterion(metric=FD, margin=0.1), PromoteCriterion(metric=CLIP, margin=0.5, relative=False)]
    cfg3 = cfg_for(candidate_evaluation(tmp_path / "e3", third, fd=4.0, clip=21.0), out="p3", criteria=criteria)
    decision = run_promote(cfg3)
    assert decision["outcome"] == "promoted" and "beats the champion" in decision["reason"]
    assert client(mlflow_uri).get_model_version_by_alias(name, "champion").version == decision["candidate"]["version"]


def test_other_protocol_is_not_compared(cfg_for, tmp_path, mlflow_uri):
    evaluation = {"clean": {"adapter": str(make_adapter(tmp_path / "a1", 1.0)), "metrics": {FD: 5.0, CLIP: 20.0}}}
    run_promote(cfg_for(fake_evaluation(tmp_path / "e1", evaluation)))
    better = {"clean": {"adapter": str(make_adapter(tmp_path / "a2", 2.0)), "metrics": {FD: 1.0, CLIP: 30.0}}}
    elsewhere = fake_evaluation(tmp_path / "e2", better, fingerprint="protocol-b")
    decision = run_promote(cfg_for(elsewhere, out="p2"))
    assert decision["outcome"] == "not_comparable" and "another protocol" in decision["reason"]
    assert "promote.require_same_protocol" in decision["reason"]
    decision = run_promote(cfg_for(elsewhere, out="p3", require_same_protocol=False))
    assert decision["outcome"] == "promoted"
    assert "another protocol" in decision["champion_before"]["metrics_source"]


def test_bad_requests_are_explained(cfg_for, tmp_path):
    evaluation = fake_evaluation(tmp_path / "e", {"base": {"metrics": {FD: 5.0, CLIP: 20.0}}})
    with pytest.raises(ValueError, match="arm 'clean' is not in the evaluation"):
        run_promote(cfg_for(evaluation))
    with pytest.raises(ValueError, match="the base model is not a candidate"):
        run_promote(cfg_for(evaluation, candidate_arm="base"))
    with pytest.raises(ValueError, match=r"metrics the evaluation does not have: \['FID'\]"):
        run_promote(cfg_for(evaluation, candidate_arm="base", criteria=[PromoteCriterion(metric="FID")]))
    with pytest.raises(FileNotFoundError, match="run `dldc evaluate` first"):
        run_promote(cfg_for(tmp_path / "nothing"))
    off = cfg_for(evaluation).model_copy(update={"tracking": TrackingConfig(enabled=False)})
    with pytest.raises(ValueError, match="needs the MLflow registry"):
        run_promote(off)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no files matching"):
        adapter_digest(empty, ["*.safetensors"])


def test_baseline_checks_want_a_clear_interval_and_no_scene_far_behind(tmp_path):
    import pandas as pd

    from dldc.registry.promote import baseline_checks

    rows = [  # FD: lower is better; clean beats raw overall, but is 50% worse in the lake scene
        {"scene": "all", "arm": "clean", "metric": "FD", "value": 1.0, "higher_is_better": False},
        {"scene": "all", "arm": "raw", "metric": "FD", "value": 2.0, "higher_is_better": False},
        {"scene": "lake", "arm": "clean", "metric": "FD", "value": 3.0, "higher_is_better": False},
        {"scene": "lake", "arm": "raw", "metric": "FD", "value": 2.0, "higher_is_better": False},
    ]
    results = {"arms": {"clean": {}, "raw": {}}, "metrics": rows, "protocol": {"ci": 0.9}}
    boot = [{"scene": "all", "arm": arm, "metric": "FD", "replicate": i, "value": centre + 0.1 * (i % 3)}
            for arm, centre in (("clean", 1.0), ("raw", 2.0)) for i in range(30)]  # fmt: skip
    pd.DataFrame(boot).to_parquet(tmp_path / "bootstrap.parquet")
    (lenient,) = baseline_checks(tmp_path, results, "clean", ["raw"], ["FD"], scene_tolerance=None)
    assert lenient["passed"] and lenient["interval_clear"] and lenient["delta"] == -1.0
    (strict,) = baseline_checks(tmp_path, results, "clean", ["raw"], ["FD"], scene_tolerance=0.25)
    assert not strict["passed"] and strict["scenes_worse"] == ["lake"]
    (tolerant,) = baseline_checks(tmp_path, results, "clean", ["raw"], ["FD"], scene_tolerance=0.6)
    assert tolerant["passed"]
    # No replicates: the interval is unknown, and unknown is not clear.
    (tmp_path / "bootstrap.parquet").unlink()
    (blind,) = baseline_checks(tmp_path, results, "clean", ["raw"], ["FD"])
    assert not blind["passed"] and blind["ci_low"] is None
    assert baseline_checks(tmp_path, results, "clean", ["global", "clean"], ["FD"]) == [
        {"baseline": "global", "passed": None, "note": "not another arm of this evaluation"},
        {"baseline": "clean", "passed": None, "note": "not another arm of this evaluation"},
    ]


# --------------------------------------------------------------------------- a real MLflow server


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> tuple[Path, Path]:
    """A dummy 8 px base and a real LoRA adapter on it: a few `dldc finetune` steps, as the demo writes them."""
    sys.path.insert(0, str(Path(__file__).parent))
    from eval_fixtures import make_manifest

    from dldc.config import FinetuneConfig
    from dldc.t2i.finetune import finetune
    from dldc.t2i.models import save_dummy_base

    work = tmp_path_factory.mktemp("tiny-adapter")
    base = save_dummy_base(work / "base")
    manifest = make_manifest(work / "data", n_images=8, size=16)
    settings = {"base": str(base), "manifest": str(manifest), "out": str(work / "adapter"), "resolution": 8,
                "rank": 4, "alpha": 8.0, "steps": 4, "batch_size": 4, "lr": 5e-2, "warmup_steps": 1,
                "checkpoint_every": 100, "sample_steps": 0, "device": "cpu"}  # fmt: skip
    finetune(FinetuneConfig(**settings), progress=False)
    return base, work / "adapter"


GENERATE = textwrap.dedent(
    """
    import io, json, sys
    import mlflow, numpy as np
    from PIL import Image

    uri, name, out = sys.argv[1:]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    images = model.predict(["a river beside farmland", "a dense forest"], params={"num_inference_steps": 2, "seed": 7})
    arrays = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in images]
    np.save(out, np.stack(arrays))
    """
)


def test_champion_loads_from_a_real_mlflow_server_and_generates(mlflow_server, tiny_adapter, tmp_path, monkeypatch):
    import subprocess

    import numpy as np

    from dldc.t2i.models import load_pipeline

    base, adapter = tiny_adapter
    name = "lora-served"
    # The evaluation names the base by a path that exists only on the pod that generated: the adapter's own
    # record (finetune.json) is found, and the base ships inside the model.
    arms = {"clean": {"adapter": str(adapter), "metrics": {FD: 5.0, CLIP: 20.0}}}
    evaluation = fake_evaluation(tmp_path / "evaluation", arms)
    cfg = DldcConfig(
        tracking=TrackingConfig(uri=mlflow_server, experiment="served"),
        registry=RegistryConfig(model_name=name),
        promote=PromoteConfig(evaluation=str(evaluation), out=str(tmp_path / "promote")),
    )
    # Registering runs no model: no pipeline is loaded on the promote pod.
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("registering a model loaded a pipeline")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)
    decision = run_promote(cfg)
    monkeypatch.undo()
    assert decision["outcome"] == "promoted"

    served = client(mlflow_server)
    champion = served.get_model_version_by_alias(name, "champion")
    assert served.get_model_version_by_alias(name, "challenger").version == champion.version
    assert champion.tags["base_model"] == "bundled:base" and champion.source.startswith("mlflow-artifacts:")

    # A fresh process that knows only the server's URI and the model's name.
    out = tmp_path / "images.npy"
    subprocess.run([sys.executable, "-c", GENERATE, mlflow_server, name, str(out)], check=True, timeout=600)
    images = np.load(out)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8

    # The adapter is applied: the base alone, same prompts, same noise, gives other images.
    pipe = load_pipeline(str(base))
    import torch

    generators = [torch.Generator("cpu").manual_seed(7 + i) for i in range(2)]
    plain = pipe(["a river beside farmland", "a dense forest"], num_inference_steps=2, generator=generators,
                 output_type="np").images  # fmt: skip
    plain = (plain * 255).round().astype(np.uint8)
    assert plain.shape == images.shape and not np.array_equal(plain, images)


def test_adapter_base_is_a_folder_to_bundle_or_a_pinned_hub_id(tmp_path):
    from dldc.registry.adapter_model import adapter_base

    base = tmp_path / "models" / "tiny"
    base.mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    adapter = make_adapter(tmp_path / "adapter", 1.0)
    # Nothing recorded: the evaluation's base; a folder here is bundled.
    found = adapter_base(adapter, evaluated=str(base))
    assert found.bundled and found.tag == "bundled:tiny"
    # finetune.json's base and revision win over the evaluation's; a hub id stays a reference.
    record = {"base": "org/sd", "config": {"base": "org/sd", "revision": "abc123"}}
    (adapter / "finetune.json").write_text(json.dumps(record))
    found = adapter_base(adapter, evaluated="/pod/elsewhere/base")
    assert not found.bundled and (found.location, found.revision, found.tag) == ("org/sd", "abc123", "org/sd@abc123")
    # promote.base wins over both; `id@revision` pins it.
    assert adapter_base(adapter, configured="other/sd@def456").tag == "other/sd@def456"
    # A path that exists only on another pod is never a tag.
    (adapter / "finetune.json").write_text(json.dumps({"base": "/pod/data/base/model"}))
    with pytest.raises(FileNotFoundError, match="neither a pipeline folder on this machine nor a hub id"):
        adapter_base(adapter, evaluated="/pod/elsewhere/base")


def test_hub_base_model_pins_the_trained_revision_and_runs_nothing(tmp_path):
    from mlflow.models import Model

    from dldc.registry.adapter_model import BaseReference, save_adapter_model

    adapter = make_adapter(tmp_path / "adapter", 1.0)
    out = tmp_path / "model"
    save_adapter_model(adapter, BaseReference("org/sd", "abc123", bundled=False), out, {"adapter_sha256": "x"})
    model = Model.load(str(out / "MLmodel"))
    flavor = model.flavors["diffusers"]
    assert (flavor["base_model"], flavor["base_model_revision"]) == ("org/sd", "abc123")
    assert model.flavors["python_function"]["loader_module"] == "mlflow.diffusers"
    assert [spec.type.name for spec in model.signature.inputs.inputs] == ["string"]
    assert model.signature.outputs.inputs[0].type.name == "binary"
    assert (out / "adapter_weights" / "pytorch_lora_weights.safetensors").is_file()
    assert model.metadata == {"adapter_sha256": "x"} and model.saved_input_example_info is not None


def _with_replicates(folder: Path, centres: dict[tuple[str, str], float], spread: dict[str, float]) -> Path:
    """bootstrap.parquet for an evaluation: arm ``a``'s replicate ``i`` is its centre + spread[a] * (±1)."""
    import pandas as pd

    rows = [{"scene": "all", "arm": arm, "metric": metric, "replicate": i,
             "value": centre + spread.get(arm, 0.0) * (1 if i % 2 else -1) + 0.01 * (i % 3)}
            for (arm, metric), centre in centres.items() for i in range(40)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "bootstrap.parquet")
    return folder


def test_champion_in_the_same_evaluation_needs_a_clear_interval(cfg_for, tmp_path, mlflow_uri):
    champion_adapter, candidate_adapter = make_adapter(tmp_path / "a1", 1.0), make_adapter(tmp_path / "a2", 2.0)
    first = fake_evaluation(
        tmp_path / "e1", {"clean": {"adapter": str(champion_adapter), "metrics": {FD: 5.0, CLIP: 20.0}}}
    )
    assert run_promote(cfg_for(first, baselines=[]))["outcome"] == "promoted"
    # The candidate beats the champion's arm on point estimates by more than the margins (0 here) ...
    arms = {"champion": {"adapter": str(champion_adapter), "metrics": {FD: 5.0, CLIP: 20.0}},
            "clean": {"adapter": str(candidate_adapter), "metrics": {FD: 4.0, CLIP: 21.0}}}  # fmt: skip
    centres = {(arm, metric): value for arm, info in arms.items() for metric, value in info["metrics"].items()}
    # ... but on these draws the paired differences straddle zero: noise, not promoted.
    noisy = _with_replicates(fake_evaluation(tmp_path / "e2", arms), centres, {"clean": 3.0, "champion": -3.0})
    decision = run_promote(cfg_for(noisy, out="p2", baselines=[]))
    assert decision["outcome"] == "rejected" and "not clear of noise" in decision["reason"]
    assert (
        decision["champion_evidence"].startswith("paired_bootstrap")
        and decision["champion_before"]["arm"] == "champion"
    )
    assert [c["interval_clear"] for c in decision["champion_checks"]] == [False, False]
    assert all(c["passed"] for c in decision["criteria"])  # the point estimates alone would have promoted
    name = cfg_for(noisy).registry.model_name
    tags = client(mlflow_uri).get_model_version(name, decision["candidate"]["version"]).tags
    assert tags["promotion.evidence"] == "paired_bootstrap"
    assert [c["ci_low"] < 0 < c["ci_high"] for c in json.loads(tags["promotion.vs_champion"])] == [True, True]
    # The same point estimates with the paired differences all on one side: promoted.
    clear = _with_replicates(fake_evaluation(tmp_path / "e3", arms), centres, {})
    decision = run_promote(cfg_for(clear, out="p3", baselines=[]))
    assert decision["outcome"] == "promoted" and all(c["interval_clear"] for c in decision["champion_checks"])
    assert client(mlflow_uri).get_model_version_by_alias(name, "champion").version == decision["candidate"]["version"]
