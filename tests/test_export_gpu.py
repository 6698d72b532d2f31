"""GPU paths of the fast scorers: ONNX Runtime CUDA / TensorRT providers and native TensorRT engines.

Run with ``pytest -m gpu`` (``scripts/gpu_check.sh``); every test skips without CUDA, and the
provider-specific ones without onnxruntime-gpu or TensorRT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iel_fixtures import write_open_clip_config  # noqa: E402


def _providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    from dldc.config import IngestConfig
    from dldc.data.ingest import ingest
    from dldc.data.synthrs import write_synthrs

    base = tmp_path_factory.mktemp("synth")
    write_synthrs(base / "synthrs", n_images=40, size=32, seed=0, progress=False)
    return str(ingest(IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest")), progress=False).manifest)


@pytest.fixture(scope="module")
def exports(manifest, tmp_path_factory):
    """A tiny open_clip model exported fp32 and fp16 (gated on the GPU), and its torch source."""
    from dldc.config import ExportConfig
    from dldc.export.exporter import export_scorer
    from dldc.export.parity import calibration_set
    from dldc.iel.factory import create_scorer

    if "CUDAExecutionProvider" not in _providers():
        pytest.skip("onnxruntime-gpu is not installed (pip install -e '.[gpu]')")
    base = tmp_path_factory.mktemp("exports")
    spec = f"open_clip:{write_open_clip_config(base)}"
    source = create_scorer(spec, device="cuda", precision="fp32")
    calib = calibration_set(manifest, 200)
    folders = {}
    for precision in ("fp32", "fp16"):
        cfg = ExportConfig(scorer=spec, out=str(base / precision), precision=precision, device="cuda")
        origin = folders.get("fp32")
        folders[precision] = export_scorer(cfg, source, calib, progress=False, from_export=origin).path
    return source, calib, folders


def test_cuda_provider_runs_fp16_within_the_gate(exports, monkeypatch):
    from dldc.export.parity import parity_figures
    from dldc.iel.onnx_scorer import load_onnx

    monkeypatch.setenv("DLDC_DISABLE_TENSORRT", "1")
    source, calib, folders = exports
    scorer = load_onnx(folders["fp16"], device="cuda")
    assert scorer.provider == "CUDAExecutionProvider" and scorer.device.type == "cuda"
    figures = parity_figures(source, scorer, calib)
    assert figures["cosine_min"] >= 0.999 and figures["spearman"] >= 0.995


def test_tensorrt_provider_builds_and_caches_engines(exports, tmp_path, monkeypatch):
    from dldc.export.parity import parity_figures
    from dldc.iel.onnx_scorer import load_onnx

    if "TensorrtExecutionProvider" not in _providers():
        pytest.skip("this onnxruntime has no TensorRT provider")
    pytest.importorskip("tensorrt")
    monkeypatch.setenv("DLDC_TRT_CACHE", str(tmp_path))
    source, calib, folders = exports
    scorer = load_onnx(folders["fp16"], device="cuda")
    assert scorer.provider == "TensorrtExecutionProvider", scorer.provider_note
    figures = parity_figures(source, scorer, calib)
    assert figures["cosine_min"] >= 0.999 and figures["spearman"] >= 0.995
    (cache,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "-trt" in cache.name and any(cache.iterdir())  # engines + timing cache keyed by GPU and version


def test_native_tensorrt_engine_matches_torch(exports, tmp_path):
    import json

    pytest.importorskip("tensorrt")
    from dldc.export.tensorrt import TensorRTTower, build_engine

    source, calib, folders = exports
    meta = json.loads((folders["fp16"] / "export.json").read_text())
    graph, profiles = folders["fp16"] / "image.onnx", meta["profiles"]["image"]
    engine = build_engine(graph, profiles, "fp16", cache_root=tmp_path)
    assert build_engine(graph, profiles, "fp16", cache_root=tmp_path) == engine  # reused from the cache
    tower = TensorRTTower(engine)
    pixels = torch.stack([source.preprocess(image) for image in calib.images[:7]])  # batch inside the profile
    features = torch.nn.functional.normalize(tower({"pixels": pixels.cuda()}).cpu(), dim=-1)
    cosine = (features * source.encode_images(pixels)).sum(-1)
    assert cosine.min() >= 0.999


def test_scoring_on_gpu_with_onnx_equals_torch(exports, manifest, tmp_path, monkeypatch):
    from dldc.config import ScoreConfig
    from dldc.iel.engine import score_manifest

    monkeypatch.setenv("DLDC_DISABLE_TENSORRT", "1")
    source, _, folders = exports
    frames = {}
    for label, scorers in (("torch", [source]), ("onnx", None)):
        cfg = ScoreConfig(
            manifest=manifest, out=str(tmp_path / label), scorers=[f"onnx:{folders['fp32']}"], device="cuda",
            precision="fp32",
        )
        frames[label] = score_manifest(cfg, scorers, progress=False).frame
    assert np.allclose(frames["torch"][source.name], frames["onnx"][source.name], atol=1e-4)
    assert (frames["torch"][f"{source.name}_tokens"] == frames["onnx"][f"{source.name}_tokens"]).all()
