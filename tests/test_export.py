"""Fast scorers: ONNX export, parity gate, ``onnx:DIR`` runtime, refusal, MLflow registry.

Tiny models (``tests/iel_fixtures.py``) on a 40-image SynthRS set (200 pairs). Each model family is
traced once per module (the dynamo exporter costs seconds per tower); the int8 and fp16 exports
are converted from the fp32 export (``from_export``), which is also what users do.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from dldc.cli import main
from dldc.config import ExportConfig, IndomainConfig, IngestConfig, ScoreConfig
from dldc.data.ingest import ingest
from dldc.data.synthrs import write_synthrs
from dldc.export.exporter import ExportRefusedError, export_scorer
from dldc.export.parity import (
    Gates,
    calibration_set,
    dropped,
    flip_rate_interval,
    gate_failures,
    pairs_to_show,
    spearman,
    wilson_interval,
)
from dldc.export.registry import fetch_export
from dldc.iel.base import CrossFitScorer, Scorer
from dldc.iel.engine import score_manifest
from dldc.iel.factory import create_scorer, parse_spec
from dldc.iel.onnx_providers import choose_providers
from dldc.iel.onnx_scorer import ExportInvalidError, OnnxCrossFitScorer, OnnxScorer, load_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iel_fixtures import CAPTIONS, build_open_clip_model, save_hf_clip, write_open_clip_config  # noqa: E402


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("synth")
    write_synthrs(base / "synthrs", n_images=40, size=32, seed=0, progress=False)
    return str(ingest(IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest")), progress=False).manifest)


@pytest.fixture(scope="module")
def calibration(manifest):
    return calibration_set(manifest, pairs=200)


def export_cfg(manifest: str, scorer: str, out: Path, **overrides) -> ExportConfig:
    return ExportConfig(scorer=scorer, out=str(out), calibration_manifest=manifest, device="cpu", **overrides)


@pytest.fixture(scope="module")
def remoteclip_spec(tmp_path_factory) -> str:
    """A tiny open_clip model saved the way RemoteCLIP ships its weights (DDP-prefixed state dict)."""
    base = tmp_path_factory.mktemp("remoteclip")
    config = write_open_clip_config(base)
    state = build_open_clip_model(config, seed=3).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, base / "RemoteCLIP-tiny.pt")
    return f"open_clip:{config}:{base / 'RemoteCLIP-tiny.pt'}"


@pytest.fixture(scope="module")
def open_clip_export(remoteclip_spec, manifest, tmp_path_factory, mlflow_uri) -> Path:
    """fp32 export through the CLI and stage runner, logged and registered in MLflow."""
    out = tmp_path_factory.mktemp("exports") / "oc-fp32"
    args = ["--no-progress", "-S", f"tracking.uri={mlflow_uri}", "-S", "tracking.experiment=t-export"]
    args += ["-S", "export.device=cpu", "-S", "export.calibration_pairs=200", "-S", "export.alias=t-exported"]
    result = CliRunner().invoke(
        main,
        [*args, "export-scorer", "--scorer", remoteclip_spec, "--out", str(out), "--calibration", manifest],
    )
    assert result.exit_code == 0, result.output
    assert "score with onnx:" in result.output
    return out


@pytest.fixture(scope="module")
def torch_scorer(remoteclip_spec):
    return create_scorer(remoteclip_spec, device="cpu")


def test_onnx_spec_parses():
    assert parse_spec("onnx:data/scorer-onnx") == ("onnx", "data/scorer-onnx", None)


@pytest.mark.slow
def test_export_is_self_describing_and_passes_the_fp32_gate(open_clip_export, torch_scorer):
    meta = json.loads((open_clip_export / "export.json").read_text())
    assert meta["precision"] == "fp32" and meta["opset"] == 18 and "dynamo=True" in meta["exporter"]
    assert meta["source"]["scorer_id"] == torch_scorer.scorer_id
    assert meta["source"]["checksum"].startswith("sha256:")
    assert meta["text_sequence"] == "dynamic"
    assert set(meta["files"]) >= {"image.onnx", "text.onnx", "open_clip_config.json"}
    parity = meta["parity"]
    assert parity["passed"] and parity["figures"]["pairs"] == 200
    assert parity["figures"]["cosine_min"] >= 0.9999 and parity["figures"]["spearman"] >= 0.995
    # The whole 200-pair manifest is the calibration set: a census, whose flip rate has no sampling error.
    assert parity["figures"]["population"] == 200
    assert parity["figures"]["flip_rate"] == parity["figures"]["flip_rate_high"] == 0.0
    assert parity["gates"]["max_flip_rate"] == 0.005 and parity["gates"]["confidence"] == 0.95
    assert meta["profiles"]["image"]["pixels"]["max"] == [256, 3, 32, 32]

    scorer = create_scorer(f"onnx:{open_clip_export}", device="cpu")
    assert isinstance(scorer, OnnxScorer) and isinstance(scorer, Scorer)
    assert scorer.scorer_id.startswith("onnx-fp32:") and scorer.scorer_id.endswith(torch_scorer.scorer_id)
    assert scorer.scorer_id != torch_scorer.scorer_id and scorer.name == torch_scorer.name
    assert scorer.provider == "CPUExecutionProvider" and "device=cpu" in scorer.provider_note
    assert scorer.token_counts(CAPTIONS) == torch_scorer.token_counts(CAPTIONS)


@pytest.mark.slow
def test_text_graph_takes_any_batch_and_sequence_length(open_clip_export, torch_scorer):
    scorer = load_onnx(open_clip_export, device="cpu")
    # The last: "!" inside a word is id 0 in CLIP's vocabulary, like the padding; its end-of-text must survive.
    texts = ["a", CAPTIONS[1], "many buildings and green trees are around a large playground near a river",
             "wow!; !; !; !; !; !; !; !; !; !; !; !; a lake !%"]  # fmt: skip
    full = torch_scorer.tokenizer(texts)  # padded to 77, as the untrimmed torch computation
    expected = torch.nn.functional.normalize(torch_scorer.model.encode_text(full).detach(), dim=-1)
    for count in (1, 3):
        trimmed = scorer.encode_texts(texts[:count])
        assert torch.allclose(trimmed, expected[:count], atol=1e-5)
    assert torch.allclose(scorer.encode_texts(texts[-1:]), expected[-1:], atol=1e-5)
    (padded,) = scorer.text_session.run(None, {"tokens": full.numpy()})
    assert np.allclose(torch.nn.functional.normalize(torch.from_numpy(padded), dim=-1), expected, atol=1e-5)
    pixels = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        reference = torch_scorer.encode_images(pixels)
    assert torch.allclose(scorer.encode_images(pixels), reference, atol=1e-5)


@pytest.mark.slow
def test_int8_and_fp16_converted_from_fp32_pass_their_gates(open_clip_export, torch_scorer, calibration, manifest):
    # A tiny random model scores its pairs within a narrow band, so int8 noise swaps a few near-tied
    # neighbours at the drop boundary (6 of 200 decisions here, a census of the manifest): the
    # flip-rate gate is loosened for it to 5% (10 flips); the cosine and Spearman gates are the
    # production ones. (The ViT-B-32 RSICD benchmark measures int8's flip rate at the production gate.)
    for precision, low, max_flip_rate in (("int8", "MatMulInteger", 0.05), ("fp16", None, 0.005)):
        out = open_clip_export.parent / f"oc-{precision}"
        cfg = export_cfg(manifest, "open_clip:unused", out, precision=precision, max_flip_rate=max_flip_rate)
        result = export_scorer(cfg, torch_scorer, calibration, progress=False, from_export=open_clip_export)
        figures = result.meta["parity"]["figures"]
        assert result.meta["parity"]["passed"], figures
        assert figures["flip_rate_low"] == figures["flip_rate"] == figures["flip_rate_high"]  # a census
        assert figures["spearman"] >= 0.995
        assert figures["cosine_min"] >= (0.99 if precision == "int8" else 0.999)
        graph = onnx.load(str(out / "image.onnx"))
        ops = {node.op_type for node in graph.graph.node}
        if low:
            assert low in ops and "ConvInteger" not in ops  # only MatMul/Gemm are quantized
        else:
            types = {init.data_type for init in graph.graph.initializer}
            assert onnx.TensorProto.FLOAT16 in types
        assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
        scorer = load_onnx(out, device="cpu")
        assert scorer.precision == precision and scorer.scorer_id.startswith(f"onnx-{precision}:")


@pytest.mark.slow
def test_broken_export_is_refused_with_its_figures(open_clip_export, torch_scorer, calibration, manifest, monkeypatch):
    from onnx import numpy_helper

    import dldc.export.exporter as exporter

    def perturbed(source, target, *args, **kwargs):  # a conversion that damages the weights
        model = onnx.load(str(source))
        for index, init in enumerate(model.graph.initializer):
            value = numpy_helper.to_array(init)
            if value.dtype == np.float32 and value.ndim == 2 and np.isfinite(value).all():  # not the causal mask
                noise = np.random.default_rng(index).normal(0, value.std() + 1e-3, value.shape).astype(np.float32)
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value + noise, init.name))
        onnx.save(model, str(target))
        return target

    monkeypatch.setattr(exporter, "convert_precision", perturbed)
    out = open_clip_export.parent / "oc-broken"
    cfg = export_cfg(manifest, "open_clip:unused", out)
    with pytest.raises(ExportRefusedError, match="refused by its parity gate") as caught:
        export_scorer(cfg, torch_scorer, calibration, progress=False, from_export=open_clip_export)
    assert caught.value.figures["cosine_min"] < 0.9999
    assert "Spearman" in str(caught.value) and "Nothing was written" in str(caught.value)
    assert not out.exists() and not list(out.parent.glob(".oc-broken*"))


@pytest.mark.slow
def test_a_sample_too_small_to_show_the_flip_rate_is_refused(open_clip_export, torch_scorer, manifest):
    # 100 of the manifest's 200 pairs: even without a flip, the flip rate's 95% interval reaches
    # 3.7% (> 0.5%), so the gate cannot show it and refuses, saying how to fix it.
    sample = calibration_set(manifest, pairs=100, seed=1)
    assert (len(sample), sample.population) == (100, 200)
    out = open_clip_export.parent / "oc-small-sample"
    with pytest.raises(ExportRefusedError, match="flip rate not shown to be") as caught:
        export_scorer(export_cfg(manifest, "open_clip:unused", out), torch_scorer, sample, progress=False,
                      from_export=open_clip_export)  # fmt: skip
    figures = caught.value.figures
    assert figures["cosine_min"] >= 0.9999 and figures["flip_rate_high"] > 0.03
    assert "interval" in str(caught.value) and not out.exists()
    if figures["flipped_pairs"] == 0:
        assert f"fewer than {pairs_to_show(0.005)} sampled pairs" in str(caught.value)


@pytest.mark.slow
def test_modified_or_refused_exports_do_not_load(open_clip_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(open_clip_export, copy)
    graph = copy / "text.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ExportInvalidError, match=r"text.onnx \(modified\)"):
        load_onnx(copy)
    meta = json.loads((copy / "export.json").read_text())
    meta["parity"]["passed"] = False
    (copy / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ExportInvalidError, match="did not pass its parity gate"):
        load_onnx(copy)
    with pytest.raises(FileNotFoundError, match="dldc export-scorer"):
        load_onnx(tmp_path)


@pytest.mark.slow
def test_scoring_a_manifest_with_onnx_equals_torch(open_clip_export, torch_scorer, manifest, tmp_path):
    scored = {}
    for label, scorers in (("torch", [torch_scorer]), ("onnx", None)):
        specs = [f"onnx:{open_clip_export}"] if scorers is None else ["unused:x"]
        # the ONNX side decodes in a worker: its recorded preprocessing must pickle and batch alike
        workers = 1 if scorers is None else 0
        cfg = ScoreConfig(
            manifest=manifest, out=str(tmp_path / label), scorers=specs, device="cpu", shard_size=64, workers=workers
        )
        scored[label] = score_manifest(cfg, scorers, progress=False)
    name = torch_scorer.name
    torch_frame, onnx_frame = scored["torch"].frame, scored["onnx"].frame
    assert list(torch_frame["pair_id"]) == list(onnx_frame["pair_id"])
    assert np.allclose(torch_frame[name], onnx_frame[name], atol=1e-5)
    assert (torch_frame[f"{name}_tokens"] == onnx_frame[f"{name}_tokens"]).all()
    ids = {label: result.report["scorers"][0]["scorer_id"] for label, result in scored.items()}
    assert ids["onnx"] != ids["torch"] and ids["onnx"].startswith("onnx-fp32:")


@pytest.mark.slow
def test_export_is_logged_registered_and_fetched_by_alias(open_clip_export, mlflow_uri, tmp_path):
    from dldc.config import TrackingConfig

    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("dldc-iel-scorer", "t-exported")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "export_scorer" and run.info.status == "FINISHED"
    assert run.data.metrics["parity.spearman"] >= 0.995
    assert run.data.tags["export.precision"] == "fp32" and run.data.tags["export.parity_passed"] == "true"
    fetched = fetch_export("dldc-iel-scorer@t-exported", tmp_path / "fetched", TrackingConfig(uri=mlflow_uri))
    scorer = load_onnx(fetched, device="cpu")
    assert scorer.scorer_id == json.loads((open_clip_export / "export.json").read_text())["scorer_id"]


def test_registered_scorer_loads_through_pyfunc_and_scores_like_the_export(open_clip_export, mlflow_uri):
    import io

    import pandas as pd
    from PIL import Image

    images = []
    for colour in [(200, 30, 30), (20, 160, 40)]:
        buffer = io.BytesIO()
        Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    captions = ["a red roof", "green farmland"]
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/dldc-iel-scorer@t-exported")
    scores = model.predict(pd.DataFrame({"image": images, "caption": captions}))
    assert list(scores.columns) == ["cosine"] and len(scores) == 2
    # The same towers and pre-processing as the export folder, scored directly.
    scorer = load_onnx(open_clip_export, device="cpu")
    pixels = torch.stack([scorer.preprocess(Image.open(io.BytesIO(png)).convert("RGB")) for png in images])
    expected = (scorer.encode_images(pixels) * scorer.encode_texts(captions)).sum(-1).numpy()
    np.testing.assert_allclose(scores["cosine"].to_numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_hf_clip_exports_with_attention_mask(manifest, calibration, tmp_path):
    source = create_scorer(f"hf:{save_hf_clip(tmp_path / 'hf-clip')}", device="cpu")
    result = export_scorer(
        export_cfg(manifest, "hf:unused", tmp_path / "hf-onnx"), source, calibration, progress=False
    )
    meta = result.meta
    assert meta["family"] == "hf" and meta["inputs"]["text"] == ["input_ids", "attention_mask"]
    assert meta["parity"]["figures"]["cosine_min"] >= 0.9999 and meta["parity"]["figures"]["flip_rate"] == 0.0
    scorer = load_onnx(tmp_path / "hf-onnx", device="cpu")
    texts = ["a", *CAPTIONS]  # different lengths: padding and mask matter
    assert torch.allclose(scorer.encode_texts(texts), source.encode_texts(texts), atol=1e-5)
    assert scorer.token_counts(texts) == source.token_counts(texts)


@pytest.mark.slow
def test_indomain_folds_export_as_a_crossfit_scorer(manifest, calibration, tmp_path):
    from dldc.iel.indomain import load_indomain, train_indomain

    folder = tmp_path / "indomain"
    train_indomain(
        IndomainConfig(
            manifest=manifest, out=str(folder), architecture="indomain-test", folds=2, epochs=1, batch_size=16,
            device="cpu",
        ),
        progress=False,
    )
    source = load_indomain(folder, device="cpu")
    out = tmp_path / "indomain-onnx"
    result = export_scorer(export_cfg(manifest, f"indomain:{folder}", out), source, calibration, progress=False)
    figures = result.meta["parity"]["figures"]
    assert figures["models"] == 2 and figures["cosine_min"] >= 0.9999 and figures["flip_rate"] == 0.0
    scorer = create_scorer(f"onnx:{out}", device="cpu")
    assert isinstance(scorer, OnnxCrossFitScorer) and isinstance(scorer, CrossFitScorer)
    assert not isinstance(scorer, Scorer) and scorer.name == "indomain" and scorer.n_folds == 2
    assert all(scorer.fold_of(i) == source.fold_of(i) for i in list(source.folds)[:20] + ["unseen-id"])
    # Text folds travel with the export: a text goes to the same fold model as in the source.
    assert scorer.trained_by == source.trained_by and scorer.trained_by
    texts = list(dict.fromkeys(pd.read_parquet(manifest)["caption"]))[:15]
    ids = list(source.folds)[:15]
    assert all(scorer.fold_for(i, t) == source.fold_for(i, t) for i in ids for t in texts)
    assert any(source.fold_for(i, t) != source.fold_of(i) for i in ids for t in texts)  # some texts re-routed

    cfgs = {
        label: ScoreConfig(manifest=manifest, out=str(tmp_path / label), scorers=["x:y"], device="cpu")
        for label in ("torch", "onnx")
    }
    frames = {
        "torch": score_manifest(cfgs["torch"], [source], progress=False).frame,
        "onnx": score_manifest(cfgs["onnx"], [scorer], progress=False).frame,
    }
    assert np.allclose(frames["torch"]["indomain"], frames["onnx"]["indomain"], atol=1e-5)
    scene_columns = [c for c in frames["torch"].columns if "scenefit" in c]  # the scene head, when trained
    for column in scene_columns:
        assert np.allclose(frames["torch"][column], frames["onnx"][column], equal_nan=True)


def test_wilson_interval_known_answers():
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction).
    for (successes, trials), expected in {
        (81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718),
    }.items():  # fmt: skip
        assert [round(x, 4) for x in wilson_interval(successes, trials)] == list(expected)
    # No event in m trials: the upper end is z² / (m + z²).
    assert wilson_interval(0, 1000)[1] == pytest.approx(1.959964**2 / (1000 + 1.959964**2), rel=1e-6)
    low, high = wilson_interval(3, 10, confidence=0.99)
    assert low < wilson_interval(3, 10)[0] and high > wilson_interval(3, 10)[1]  # wider at higher confidence
    for bad in ((1, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_flip_rate_interval_counts_swaps_and_shrinks_for_a_larger_share_of_the_manifest():
    # Flips come in swaps (one kept->dropped, one dropped->kept per scene): Wilson on 2 of 120.
    assert flip_rate_interval(4, 240) == wilson_interval(2, 120)
    assert [round(x, 4) for x in flip_rate_interval(4, 240)] == [0.0046, 0.0587]
    assert flip_rate_interval(4, 240, population=240) == (4 / 240, 4 / 240)  # a census: the rate itself
    alone, of_large, of_small = (flip_rate_interval(6, 2048, p)[1] for p in (None, 10**8, 4096))
    assert of_small < of_large <= alone and of_large == pytest.approx(alone, rel=1e-3)
    # pairs_to_show: the fewest sampled pairs whose interval can end at 0.5% with no flip at all.
    assert pairs_to_show(0.005) == 1530
    assert flip_rate_interval(0, 1530)[1] <= 0.005 < flip_rate_interval(0, 1528)[1]


def test_gates_and_decisions_on_known_figures():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7, 0.6, 0.5])
    scenes = ["a"] * 5 + ["b"] * 5
    assert dropped(scores, scenes, 0.4).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert spearman(scores, scores * 2) == pytest.approx(1.0) and spearman(scores, -scores) == pytest.approx(-1.0)

    def figures(flipped, pairs, population=None, **extra):
        low, high = flip_rate_interval(flipped, pairs, population)
        return {"cosine_min": 0.99995, "spearman": 0.999, "flipped_pairs": flipped, "pairs": pairs,
                "flip_rate": flipped / pairs, "flip_rate_low": low, "flip_rate_high": high, "drop_ratio": 0.2,
                **extra}  # fmt: skip

    # 4,096 sampled pairs: up to 3 swaps pass (upper ends 0.19% .. 0.43%); 5 swaps do not (0.57%).
    assert gate_failures(figures(0, 4096), "fp32", Gates()) == []
    assert gate_failures(figures(6, 4096), "fp32", Gates()) == []
    (failure,) = gate_failures(figures(10, 4096), "fp32", Gates())
    assert "flip rate not shown to be ≤ 0.50%" in failure and "10 of 4096" in failure
    # The case: 4 flips of 240 sampled pairs; the point rate (1.67%) is far above 0.5%,
    # and the interval (0.46% .. 5.9%) cannot show anything either way: refused.
    assert len(gate_failures(figures(4, 240), "int8", Gates())) == 1
    # Without a flip, fewer than 1,530 sampled pairs can never pass; the message says so.
    (failure,) = gate_failures(figures(0, 1024), "fp32", Gates())
    assert "fewer than 1530 sampled pairs" in failure
    # A census (the whole manifest) is judged on its measured rate: 4 of 1,000 pass, 6 of 1,000 do not.
    assert gate_failures(figures(4, 1000, population=1000), "fp32", Gates()) == []
    assert len(gate_failures(figures(6, 1000, population=1000), "fp32", Gates())) == 1
    assert gate_failures(figures(6, 1000, population=1000), "fp16", Gates(max_flip_rate=0.01)) == []
    # The cosine floor depends on the precision; every failure is listed.
    failures = gate_failures(figures(10, 4096, cosine_min=0.9995), "fp32", Gates())
    assert len(failures) == 2 and "cosine" in failures[0] and "flip rate" in failures[1]
    assert gate_failures(figures(0, 4096, cosine_min=0.9995), "int8", Gates()) == []


def test_execution_providers_prefer_tensorrt_then_cuda(monkeypatch, tmp_path):
    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert choose_providers("auto", "fp32", [cpu])[0] == [cpu]
    assert "int8" in choose_providers("auto", "int8", [trt, cuda, cpu])[1]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        choose_providers("cuda", "fp16", [cpu])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    providers, note = choose_providers("auto", "fp16", [trt, cuda, cpu])
    assert providers == [cpu] and "no CUDA device" in note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("DLDC_TRT_CACHE", str(tmp_path))
    profiles = {"pixels": {"min": [1, 3, 224, 224], "opt": [64, 3, 224, 224], "max": [256, 3, 224, 224]}}
    providers, _ = choose_providers("cuda:1", "fp16", [trt, cuda, cpu], profiles)
    assert [p if isinstance(p, str) else p[0] for p in providers] == [trt, cuda, cpu]
    options = providers[0][1]
    assert options["device_id"] == 1 and options["trt_engine_cache_enable"]
    assert Path(options["trt_engine_cache_path"]).parent == tmp_path
    assert Path(options["trt_engine_cache_path"]).name.startswith("NVIDIA-H100-80GB-HBM3-trt")
    assert options["trt_profile_max_shapes"] == "pixels:256x3x224x224"
    monkeypatch.setenv("DLDC_DISABLE_TENSORRT", "1")
    providers, note = choose_providers("cuda", "fp32", [trt, cuda, cpu])
    assert providers[0][0] == cuda and "DLDC_DISABLE_TENSORRT" in note


def test_tensorrt_missing_is_a_clear_error():
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from dldc.export.tensorrt import build_engine

        with pytest.raises(ImportError, match="gpu extra"):
            build_engine("missing.onnx", {})
    else:
        pytest.skip("tensorrt is installed here")


def test_export_config_is_in_the_resolved_configuration():
    result = CliRunner().invoke(main, ["-S", "export.precision=int8", "config", "show", "--json"])
    assert result.exit_code == 0
    section = json.loads(result.output)["export"]
    assert section["precision"] == "int8" and section["min_spearman"] == 0.995 and section["max_flip_rate"] == 0.005
    assert section["calibration_pairs"] == 4096 == ExportConfig().calibration_pairs  # > pairs_to_show(0.005)
    assert ExportConfig().precision == "fp32"  # the default export, on a CPU too: int8 is opt-in
    bad = CliRunner().invoke(main, ["-S", "export.precision=int4", "config", "show"])
    assert bad.exit_code == 1 and "export.precision" in bad.output


def test_iel_never_imports_export():
    # dldc.export writes exports and imports dldc.iel; dldc.iel runs them (onnx:DIR) without it.
    import ast

    root = Path(__file__).resolve().parents[1] / "dldc" / "iel"
    offending = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "dldc.export" or n.startswith("dldc.export.") for n in names):
                offending.append(f"{path.name}:{node.lineno}")
    assert offending == []
