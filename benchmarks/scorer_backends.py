"""Scorer backends side by side: torch eager vs ONNX Runtime fp32 / int8 (CPU), and the GPU paths.

    python benchmarks/scorer_backends.py [--images 48] [--parity-pairs 2048] [--arch ViT-B-32] [--threads 1]

One ViT-B-32-sized open_clip model (random weights, seeded: speed does not depend on them) scores
the pairs of the first N real RSICD images with every backend, model only: the unique images
(decoded and preprocessed once, in memory) and the unique captions go through the image and
text towers in batches; pairs/s = pairs / (image time + text time).

CPU (always): torch eager fp32, ORT fp32, ORT int8 (dynamic quantization; the int8 recipe,
row ``ort_int8_per_channel``: MatMul/Gemm, u8 weights, per-channel scales; and the variants
investigated, per-tensor scales: ``ort_int8`` (u8), ONNX Runtime's default s8 weights, 7-bit s8
weights (``reduce_range``, against AVX2 u8×s8 saturation), the patch-embedding Conv quantized too).
Fairness: torch runs with ``--threads`` intra-op threads and ONNX Runtime with the same
``intra_op_num_threads`` (default 1 each, so a loaded shared machine disturbs both alike).

Parity and the production gate: ORT fp32 and the int8 recipe are gated as ``dldc export-scorer``
gates them (its rule and thresholds) on a seeded sample of ``--parity-pairs`` pairs of the whole
RSICD subset's manifest (embedding cosine, Spearman of pair scores, kept/dropped flip rate at a per-scene
drop ratio of 0.2 with its 95% interval, and the production gate's verdict: upper end ≤ 0.5%).
The other int8 variants are compared on the timing pairs only (a census of that small manifest:
their flip rate has no interval there). ``score_noise`` puts the flip rate in context: what
Gaussian noise of a given size on the torch pair scores does to the decisions of the same sample.

Trained scorer (``--indomain-images``, default 400): the demo's in-domain scorer (params.yaml's
``indomain`` section) trained on SynthRS of that many images, exported fp32 and int8 and gated on
its whole manifest (the demo's calibration: a census), with model-only speeds of one fold model.

GPU (only when CUDA is present): torch fp32 / fp16 / bf16 autocast, ORT CUDA fp32 and fp16,
ORT TensorRT fp16, native TensorRT fp16 engine, for ``--gpu-archs`` (ViT-B-32 and ViT-L-14),
plus end-to-end ``score_manifest`` (decode included) on the fastest backend vs its model-only figure.

Targets: CPU int8 >= 1.5x torch fp32 at Spearman >= 0.995; GPU TensorRT fp16 >= 3x torch fp32;
end-to-end >= 80% of model-only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rsicd_subset_manifest, write_result  # noqa: E402

from dldc.config import ExportConfig, ScoreConfig, load_config  # noqa: E402
from dldc.export.exporter import export_scorer  # noqa: E402
from dldc.export.parity import Gates, calibration_set, dropped, embed, gate_failures, parity_figures  # noqa: E402
from dldc.iel.onnx_scorer import load_onnx  # noqa: E402
from dldc.iel.open_clip_scorer import load_open_clip  # noqa: E402

# Permissive gates for the benchmark's own exports: every variant is measured, and whether it
# passes the production gates is reported beside its figures.
MEASURE_ONLY = {"min_cosine_fp32": -1.0, "min_cosine_fp16": -1.0, "min_cosine_int8": -1.0}
MEASURE_ONLY |= {"min_spearman": -1.0, "max_flip_rate": 1.0}


def model_only(scorer: Any, pixels: torch.Tensor, texts: list[str], batch: int, repeats: int = 1) -> dict[str, float]:
    """Seconds for the image tower over all pixels and the text tower over all texts (best of ``repeats``)."""
    scorer.encode_images(pixels[:2])
    scorer.encode_texts(texts[:2])  # first-call overheads out of the timing
    best = {"image_s": float("inf"), "text_s": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(pixels), batch):
            scorer.encode_images(pixels[i : i + batch])
        middle = time.perf_counter()
        for i in range(0, len(texts), batch):
            scorer.encode_texts(texts[i : i + batch])
        end = time.perf_counter()
        best = {"image_s": min(best["image_s"], middle - start), "text_s": min(best["text_s"], end - middle)}
    if scorer_device(scorer).type == "cuda":
        torch.cuda.synchronize()
    return best


def scorer_device(scorer: Any) -> torch.device:
    return getattr(scorer, "device", torch.device("cpu"))


def figures_of(timing: dict[str, float], pairs: int, images: int, texts: int) -> dict[str, float]:
    total = timing["image_s"] + timing["text_s"]
    return {
        "seconds": round(total, 3),
        "pairs_per_s": round(pairs / total, 1),
        "images_per_s": round(images / timing["image_s"], 1),
        "texts_per_s": round(texts / timing["text_s"], 1),
    }


def parity_of(source: Any, candidate: Any, calib: Any, precision: str) -> dict[str, Any]:
    """Parity of a scorer against torch on the benchmark pairs, and the production gate's verdict."""
    return parity_summary(parity_figures(source, candidate, calib, drop_ratio=0.2), precision)


def parity_summary(figures: dict[str, Any], precision: str, judge: bool = True) -> dict[str, Any]:
    """The parity figures worth reporting and, when ``judge``, the production gate's verdict on them."""
    keep = ("cosine_min", "cosine_mean", "spearman", "flip_rate", "flip_rate_low", "flip_rate_high", "flipped_pairs",
            "pairs", "population", "max_abs_score_diff", "mean_abs_score_diff")  # fmt: skip
    verdict = (gate_failures(figures, precision, Gates()) or "passed") if judge else "not judged: timing pairs only"
    return {**{k: figures.get(k) for k in keep}, "production_gate": verdict}


def pair_scores(scorer: Any, calib: Any) -> np.ndarray:
    """The calibration pairs' scores under a scorer (a cross-fitted one: each pair by its held-out fold model)."""
    crossfit = hasattr(scorer, "fold_model")
    pair_fold = np.array([scorer.fold_of(calib.image_ids[i]) for i in calib.pair_image]) if crossfit else None
    scores = np.zeros(len(calib))
    for fold in range(scorer.n_folds) if crossfit else [None]:
        images, texts = embed(scorer.fold_model(fold) if crossfit else scorer, calib)
        mine = pair_fold == fold if crossfit else np.ones(len(calib), bool)
        pair_image, pair_text = np.asarray(calib.pair_image)[mine], np.asarray(calib.pair_text)[mine]
        scores[mine] = (images[pair_image] * texts[pair_text]).sum(-1).double().numpy()
    return scores


def score_noise(scorer: Any, calib: Any, sigmas: tuple[float, ...], draws: int = 20) -> dict[str, Any]:
    """Flip rate of the calibration pairs' kept/dropped decisions when Gaussian noise of each size is
    added to their scores under ``scorer`` (mean of ``draws`` seeded draws), and the spread of the
    scores within a scene."""
    scores, scenes = pair_scores(scorer, calib), calib.scenes
    pair_image, pair_text = np.asarray(calib.pair_image), np.asarray(calib.pair_text)
    frame = __import__("pandas").DataFrame({"score": scores, "scene": scenes})
    reference = dropped(scores, scenes, 0.2)
    # One noise value per distinct (image, caption): repeated captions of an image stay tied, as
    # they do under any export (same embeddings), and ties are broken by position on both sides.
    _, distinct = np.unique(pair_image * (pair_text.max() + 1) + pair_text, return_inverse=True)
    rng = np.random.default_rng(0)
    rates = {}
    for sigma in sigmas:
        flips = [(dropped(scores + rng.normal(0, sigma, distinct.max() + 1)[distinct], scenes, 0.2) != reference).mean()
                 for _ in range(draws)]  # fmt: skip
        rates[f"{sigma:g}"] = round(float(np.mean(flips)), 5)
    return {"within_scene_score_std": round(float(frame.groupby("scene")["score"].std().mean()), 5),
            "flip_rate_by_noise_sigma": rates, "draws": draws}  # fmt: skip


class MemoScorer:
    """A scorer whose embeddings are computed once per distinct input (the gate of every export
    compares against the same torch embeddings; computing them once saves minutes on a CPU)."""

    def __init__(self, scorer: Any):
        self._scorer = scorer
        self._memo: dict[bytes, torch.Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        key = b"i" + pixels.numpy().tobytes()
        if key not in self._memo:
            self._memo[key] = self._scorer.encode_images(pixels)
        return self._memo[key]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        key = b"t" + "\x1f".join(texts).encode()
        if key not in self._memo:
            self._memo[key] = self._scorer.encode_texts(texts)
        return self._memo[key]


def export(cfg_kwargs: dict[str, Any], source: Any, calib: Any, **kwargs: Any) -> Path:
    """Export with measure-only gates; the export's own parity figures are on the benchmark pairs."""
    result = export_scorer(ExportConfig(**{**MEASURE_ONLY, **cfg_kwargs}), source, calib, progress=False, **kwargs)
    return result.path


def cpu_section(args: argparse.Namespace, tmp: Path, manifest: Path, calib: Any, frame: Any, gate: Any,
                gate_manifest: Path) -> dict[str, Any]:  # fmt: skip
    source = load_open_clip(args.arch, None, "cpu")
    pixels = torch.stack([source.preprocess(image) for image in calib.images])
    texts = calib.texts
    pairs, n_images, n_texts = len(frame), len(calib.images), len(texts)
    base = {"scorer": f"open_clip:{args.arch}", "calibration_manifest": str(gate_manifest), "device": "cpu"}

    # The gate runs as exports run it (torch and ONNX Runtime on every core); timings use --threads.
    torch.set_num_threads(args.parity_threads)
    tick = time.perf_counter()
    reference = MemoScorer(source)
    fp32_dir = export({**base, "out": str(tmp / "fp32")}, reference, gate)
    export_seconds = time.perf_counter() - tick
    # "int8_per_channel" is the int8 recipe (MatMul/Gemm, u8 weights, per-channel scales), gated on the
    # parity sample; the others are the variants investigated (per-tensor scales, ONNX Runtime's default
    # s8 weights, 7-bit s8 weights, the patch-embedding Conv quantized too), compared on the timing pairs.
    variants = {
        "int8": {"precision": "int8", "int8_per_channel": False},
        "int8_s8_weights": {"precision": "int8", "int8_weight_type": "qint8", "int8_per_channel": False},
        "int8_s8_reduce_range": {
            "precision": "int8", "int8_weight_type": "qint8", "int8_reduce_range": True, "int8_per_channel": False
        },
        "int8_per_channel": {"precision": "int8", "int8_per_channel": True},
        "int8_with_conv": {"precision": "int8", "int8_ops": ["MatMul", "Gemm", "Conv"], "int8_per_channel": False},
    }
    gated = {"ort_fp32", "ort_int8_per_channel"}
    dirs = {"ort_fp32": fp32_dir}
    for name, extra in variants.items():
        on_gate = f"ort_{name}" in gated
        cfg = {**base, "out": str(tmp / name), **extra, **({} if on_gate else {"calibration_manifest": str(manifest)})}
        dirs[f"ort_{name}"] = export(cfg, reference, gate if on_gate else calib, from_export=fp32_dir)
    noise = score_noise(reference, gate, (1e-5, 3e-5, 1e-4, 3e-4, 1e-3))
    torch.set_num_threads(args.threads)

    results: dict[str, Any] = {}
    scorers = {"torch_fp32": source} | {n: load_onnx(f, device="cpu", threads=args.threads) for n, f in dirs.items()}
    # Round robin: every repeat times each backend once, so a shared machine's changing load
    # disturbs all of them alike; each backend's best pass counts.
    timings = {name: {"image_s": float("inf"), "text_s": float("inf")} for name in scorers}
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            once = model_only(scorer, pixels, texts, args.batch_size, 1)
            timings[name] = {k: min(timings[name][k], once[k]) for k in once}
    results["torch_fp32"] = figures_of(timings["torch_fp32"], pairs, n_images, n_texts)
    for name, folder in dirs.items():
        meta = __import__("json").loads((folder / "export.json").read_text())
        results[name] = {
            **figures_of(timings[name], pairs, n_images, n_texts),
            "parity_vs_torch": {
                "on": "parity sample" if name in gated else "timing pairs",
                **parity_summary(meta["parity"]["figures"], meta["precision"], judge=name in gated),
            },
            "export_seconds": meta["seconds"]["export_s"],
            "parity_seconds": meta["seconds"]["parity_s"],
        }
    torch_rate = results["torch_fp32"]["pairs_per_s"]
    for name in dirs:
        results[name]["speedup_vs_torch_fp32"] = round(results[name]["pairs_per_s"] / torch_rate, 2)
        results[name]["image_speedup"] = round(results[name]["images_per_s"] / results["torch_fp32"]["images_per_s"], 2)
        results[name]["text_speedup"] = round(results[name]["texts_per_s"] / results["torch_fp32"]["texts_per_s"], 2)
    results["export_fp32_seconds"] = round(export_seconds, 1)
    results["score_noise"] = noise
    return results


def indomain_section(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The demo's trained in-domain scorer: fp32 and int8 exports gated on its whole manifest, and speeds."""
    from dldc.data.ingest import ingest
    from dldc.data.synthrs import write_synthrs
    from dldc.iel.indomain import load_indomain, train_indomain

    demo = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    tick = time.perf_counter()
    write_synthrs(tmp / "synthrs", **{**demo.synth.model_dump(exclude={"out"}), "n_images": args.indomain_images},
                  progress=False)  # fmt: skip
    manifest = ingest(demo.ingest.model_copy(update={"root": str(tmp / "synthrs"), "out": str(tmp / "ingest")}),
                      progress=False).manifest  # fmt: skip
    cfg = demo.indomain.model_copy(update={"manifest": str(manifest), "out": str(tmp / "scorer"), "device": "cpu"})
    train_indomain(cfg, progress=False)
    train_seconds = time.perf_counter() - tick
    source = load_indomain(cfg.out, device="cpu")
    calib = calibration_set(str(manifest), ExportConfig().calibration_pairs)
    base = {"scorer": f"indomain:{cfg.out}", "calibration_manifest": str(manifest), "device": "cpu"}
    fp32_dir = export({**base, "out": str(tmp / "indomain-fp32")}, source, calib)
    int8_dir = export({**base, "out": str(tmp / "indomain-int8"), "precision": "int8"}, source, calib,
                      from_export=fp32_dir)  # fmt: skip
    fold = source.fold_model(0)
    pixels = torch.stack([fold.preprocess(image) for image in calib.images])
    counts = (len(calib), len(calib.images), len(calib.texts))
    scorers = {"torch_fp32": fold} | {
        name: load_onnx(folder, device="cpu", threads=args.threads).fold_model(0)
        for name, folder in (("ort_fp32", fp32_dir), ("ort_int8_per_channel", int8_dir))
    }
    results: dict[str, Any] = {
        "data": f"SynthRS-{args.indomain_images} (demo settings): {counts[0]} pairs, all of them the parity set",
        "train_seconds": round(train_seconds, 1),
    }
    for name, scorer in scorers.items():
        results[name] = figures_of(model_only(scorer, pixels, calib.texts, args.batch_size, args.repeats), *counts)
    for name, folder in (("ort_fp32", fp32_dir), ("ort_int8_per_channel", int8_dir)):
        meta = __import__("json").loads((folder / "export.json").read_text())
        results[name]["parity_vs_torch"] = parity_summary(meta["parity"]["figures"], meta["precision"])
        results[name]["speedup_vs_torch_fp32"] = round(
            results[name]["pairs_per_s"] / results["torch_fp32"]["pairs_per_s"], 2
        )
    results["score_noise"] = score_noise(source, calib, (1e-4, 3e-4, 1e-3, 3e-3))
    return results


def gpu_section(args: argparse.Namespace, tmp: Path, manifest: Path, calib: Any, frame: Any) -> dict[str, Any]:

    out: dict[str, Any] = {}
    pairs = len(frame)
    for arch in args.gpu_archs.split(","):
        section: dict[str, Any] = {}
        results: dict[str, Any] = {}
        reference = load_open_clip(arch, None, "cuda", "fp32")
        pixels = torch.stack([reference.preprocess(image) for image in calib.images])
        texts = calib.texts
        counts = (pairs, len(pixels), len(texts))
        for precision in ("fp32", "fp16", "bf16"):
            scorer = load_open_clip(arch, None, "cuda", precision)
            results[f"torch_{precision}"] = figures_of(model_only(scorer, pixels, texts, args.gpu_batch, 3), *counts)
        base = {"scorer": f"open_clip:{arch}", "calibration_manifest": str(manifest), "device": "cuda"}
        fp32_dir = export({**base, "out": str(tmp / f"{arch}-fp32")}, reference, calib)
        fp16_dir = export({**base, "out": str(tmp / f"{arch}-fp16"), "precision": "fp16"}, reference, calib,
                          from_export=fp32_dir)
        os.environ["DLDC_DISABLE_TENSORRT"] = "1"
        for name, folder in (("ort_cuda_fp32", fp32_dir), ("ort_cuda_fp16", fp16_dir)):
            scorer = load_onnx(folder, device="cuda")
            results[name] = {
                **figures_of(model_only(scorer, pixels, texts, args.gpu_batch, 3), *counts),
                "provider": scorer.provider,
                "parity_vs_torch": parity_of(reference, scorer, calib, scorer.precision),
            }
        del os.environ["DLDC_DISABLE_TENSORRT"]
        try:
            scorer = load_onnx(fp16_dir, device="cuda")
            results["ort_tensorrt_fp16"] = {
                **figures_of(model_only(scorer, pixels, texts, args.gpu_batch, 3), *counts),
                "provider": scorer.provider,
                "parity_vs_torch": parity_of(reference, scorer, calib, "fp16"),
            }
        except Exception as err:  # report, do not abort the other measurements
            results["ort_tensorrt_fp16"] = {"error": f"{type(err).__name__}: {err}"}
        try:
            results["tensorrt_fp16"] = native_tensorrt(fp16_dir, pixels, reference, texts, args.gpu_batch, counts)
        except Exception as err:
            results["tensorrt_fp16"] = {"error": f"{type(err).__name__}: {err}"}
        rate = results["torch_fp32"]["pairs_per_s"]
        for figures in results.values():
            if "pairs_per_s" in figures:
                figures["speedup_vs_torch_fp32"] = round(figures["pairs_per_s"] / rate, 2)
        section["backends"] = results
        best = max(
            (n for n in results if n.startswith("ort_") and "pairs_per_s" in results[n]),
            key=lambda n: results[n]["pairs_per_s"],
        )
        section["end_to_end"] = end_to_end(best, fp16_dir if "fp16" in best else fp32_dir, manifest, tmp, arch,
                                           results[best]["pairs_per_s"], args.gpu_batch)
        out[arch] = section
    return out


def native_tensorrt(folder: Path, pixels, reference, texts, batch: int, counts) -> dict[str, Any]:
    """Build fp16 engines for both towers with the TensorRT API and time them (model only)."""
    import json

    from dldc.export.tensorrt import TensorRTTower, build_engine

    meta = json.loads((folder / "export.json").read_text())
    towers = meta["towers"][0]
    image = TensorRTTower(build_engine(folder / towers["image"], meta["profiles"]["image"], "fp16"))
    text = TensorRTTower(build_engine(folder / towers["text"], meta["profiles"]["text"], "fp16"))
    onnx_scorer = load_onnx(folder, device="cpu")  # only for its tokenizer
    gpu_pixels = pixels.cuda()
    token_batches = [
        {k: torch.from_numpy(v).cuda() for k, v in onnx_scorer.text_inputs(texts[i : i + batch]).items()}
        for i in range(0, len(texts), batch)
    ]
    image({"pixels": gpu_pixels[:2]})
    start = time.perf_counter()
    for i in range(0, len(gpu_pixels), batch):
        image({"pixels": gpu_pixels[i : i + batch]})
    middle = time.perf_counter()
    for inputs in token_batches:
        text(inputs)
    torch.cuda.synchronize()
    end = time.perf_counter()
    return figures_of({"image_s": middle - start, "text_s": end - middle}, *counts)


def end_to_end(backend: str, folder: Path, manifest: Path, tmp: Path, arch: str, model_rate: float, batch: int) -> dict:
    """`dldc score` through the engine (decode included, fresh store) with the export vs its model-only rate."""
    cfg = ScoreConfig(
        manifest=str(manifest), out=str(tmp / f"e2e-{arch}"), scorers=[f"onnx:{folder}"], device="cuda",
        batch_size=batch, workers=4,
    )
    start = time.perf_counter()
    from dldc.iel.engine import score_manifest

    result = score_manifest(cfg, progress=False)
    seconds = time.perf_counter() - start
    rate = result.report["pairs"] / seconds
    return {"backend": backend, "pairs_per_s": round(rate, 1), "vs_model_only": round(rate / model_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="timing set: the pairs of the first N images")
    parser.add_argument("--parity-pairs", type=int, default=2048,
                        help="CPU gate: pairs sampled from the whole RSICD subset (>= 1,530 can pass at 0.5%%)")
    parser.add_argument("--parity-threads", type=int, default=0, help="torch threads for the gate (0: all cores)")
    parser.add_argument("--indomain-images", type=int, default=400, help="trained-scorer section (0: skip)")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (CPU section)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="CPU timings: best of N")
    parser.add_argument("--gpu-archs", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--gpu-images", type=int, default=500)
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--result-name", default="scorer_backends", help="benchmarks/results/NAME.json")
    args = parser.parse_args()
    args.parity_threads = args.parity_threads or os.cpu_count() or 1
    torch.set_num_threads(args.threads)

    figures: dict[str, Any] = {
        "model": f"open_clip {args.arch}, random weights (seeded)",
        "threads": {"torch_intra_op": torch.get_num_threads(), "ort_intra_op": args.threads},
        "batch_size": args.batch_size,
        "measure": "model only: unique images (preprocessed in memory) + unique captions; best of repeats, "
        "backends timed round robin",
        "targets": {"cpu_int8_vs_torch_fp32": ">= 1.5 at Spearman >= 0.995", "gpu_tensorrt_fp16_vs_torch_fp32": ">= 3",
                    "end_to_end_vs_model_only": ">= 0.8"},
    }
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        if args.indomain_images:
            tick = time.perf_counter()
            figures["indomain"] = indomain_section(args, tmp)
            figures["indomain"]["section_seconds"] = round(time.perf_counter() - tick, 1)
        if not args.skip_cpu:
            tick = time.perf_counter()
            manifest = rsicd_subset_manifest(tmp, args.images)
            calib = calibration_set(str(manifest), pairs=10**9)
            frame = __import__("pandas").read_parquet(manifest)
            whole = tmp / "rsicd-full" / "manifest.parquet"
            gate = calibration_set(str(whole), pairs=args.parity_pairs, seed=0)
            figures["data"] = (f"first {args.images} RSICD images: {len(frame)} pairs, {len(calib.images)} images, "
                               f"{len(calib.texts)} unique captions")  # fmt: skip
            figures["parity_data"] = (f"{len(gate)} of the {gate.population} pairs of the whole RSICD subset (seed 0): "
                                      f"{len(gate.images)} images, {len(gate.texts)} unique captions")  # fmt: skip
            figures["threads"]["parity_torch_intra_op"] = args.parity_threads
            figures["cpu"] = cpu_section(args, tmp, manifest, calib, frame, gate, whole)
            figures["cpu"]["section_seconds"] = round(time.perf_counter() - tick, 1)
        if torch.cuda.is_available():
            manifest = rsicd_subset_manifest(tmp, args.gpu_images)
            calib = calibration_set(str(manifest), pairs=10**9)
            frame = __import__("pandas").read_parquet(manifest)
            figures["gpu_data"] = f"first {args.gpu_images} RSICD images: {len(frame)} pairs"
            figures["gpu"] = gpu_section(args, tmp, manifest, calib, frame)
        else:
            figures["gpu"] = "not measured: no CUDA device on this machine (run scripts/gpu_check.sh on a GPU node)"
    write_result(args.result_name, figures)


if __name__ == "__main__":
    main()
