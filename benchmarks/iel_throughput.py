"""IEL throughput: `dldc score` vs a naive one-pair-per-call loop vs the model alone, in one run.

    python benchmarks/iel_throughput.py [--images 100] [--arch ViT-B-32]

A ViT-B-32-sized open_clip model (random weights: speed does not depend on them) scores the
pairs of the first N real RSICD images three ways:

* ``engine``: :func:`dldc.iel.engine.score_manifest` (decode workers, dedup, batching, store);
* ``naive``: for each pair, decode + preprocess its image, encode it and its caption with
  one model call each (what Data-Juicer's CLIP filter does);
* ``model_only``: the same unique images (already decoded and preprocessed, in memory) and
  unique captions through the model in batches: the ceiling for the engine.

Targets: engine >= 3x naive, engine >= 80% of model_only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rsicd_subset_manifest, write_result  # noqa: E402

from dldc.config import ScoreConfig  # noqa: E402
from dldc.data.images import load_rgb  # noqa: E402
from dldc.data.manifest import dataset_root, read_manifest  # noqa: E402
from dldc.iel.engine import score_manifest  # noqa: E402
from dldc.iel.open_clip_scorer import load_open_clip  # noqa: E402


def naive(scorer, frame, root) -> float:
    start = time.perf_counter()
    for row in frame.itertuples():
        pixels = scorer.preprocess(load_rgb(root / row.image))[None]
        (scorer.encode_images(pixels) * scorer.encode_texts([row.caption])).sum()
    return time.perf_counter() - start


def model_only(scorer, frame, root, batch_size: int) -> float:
    unique = frame.drop_duplicates("image_sha256")
    pixels = torch.stack([scorer.preprocess(load_rgb(root / p)) for p in unique["image"]])
    texts = list(dict.fromkeys(frame["caption"]))
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        scorer.encode_images(pixels[i : i + batch_size])
    for i in range(0, len(texts), batch_size):
        scorer.encode_texts(texts[i : i + batch_size])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scorer = load_open_clip(args.arch, None, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = rsicd_subset_manifest(Path(tmp), args.images)
        frame, meta = read_manifest(manifest)
        root = dataset_root(manifest, meta)
        scorer.encode_texts(["warm up"])  # first-call overheads out of every timing
        timings = {"model_only": model_only(scorer, frame, root, args.batch_size)}
        for workers in (0, 1):
            cfg = ScoreConfig(
                manifest=str(manifest),
                out=f"{tmp}/engine-{workers}",
                batch_size=args.batch_size,
                workers=workers,
                device="cpu",
            )
            start = time.perf_counter()
            score_manifest(cfg, [scorer], progress=False)
            timings[f"engine_workers_{workers}"] = time.perf_counter() - start
        timings["naive"] = naive(scorer, frame, root)

    pairs = len(frame)
    engine = min(timings["engine_workers_0"], timings["engine_workers_1"])
    figures = {
        "model": f"open_clip {args.arch}, random weights, fp32, CPU",
        "data": f"first {args.images} RSICD images: {pairs} pairs, {frame['image_sha256'].nunique()} images, "
        f"{frame['caption'].nunique()} unique captions",
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "pairs_per_second": {k: round(pairs / v, 1) for k, v in timings.items()},
        "engine_vs_naive": round(timings["naive"] / engine, 2),
        "engine_vs_model_only": round(timings["model_only"] / engine, 3),
        "targets": {"engine_vs_naive": ">= 3", "engine_vs_model_only": ">= 0.8"},
    }
    write_result("iel_throughput", figures)


if __name__ == "__main__":
    main()
