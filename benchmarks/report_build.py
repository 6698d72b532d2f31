"""How long the cleaning report takes, and how large it is, on RSICD-scale data (10,000 pairs).

    python benchmarks/report_build.py [--work DIR] [--images 2000] [--size 224]

Builds the input by code: SynthRS (``--images`` images of ``--size`` px, 5 captions each, 10 scenes),
ingested; scores drawn at random with a noisy tail per scene; ``dldc select`` in proxy mode; an EGL
lineage that repairs 10% of the train pairs; a few ingest rejects; three generation arms over the
test prompts; an evaluation's ``results.json``. Then times :func:`dldc.report.build_report` (cold: every
thumbnail written) and writes ``benchmarks/results/report_build.json`` (seconds, bytes, counts).
Target: under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from dldc.config import IngestConfig, ReportConfig, load_config  # noqa: E402
from dldc.data.images import load_rgb  # noqa: E402
from dldc.data.ingest import ingest  # noqa: E402
from dldc.data.manifest import dataset_root, read_manifest  # noqa: E402
from dldc.data.synthrs import write_synthrs  # noqa: E402
from dldc.iel.fuse import scene_percentile  # noqa: E402
from dldc.report import build_report  # noqa: E402
from dldc.select.selection import select_ratios  # noqa: E402

ARMS = {"base": 0.7, "raw": 0.4, "clean": 0.2}


def build_inputs(work: Path, images: int, size: int) -> dict[str, str]:
    """The report's inputs under ``work`` (see the module docstring)."""
    write_synthrs(work / "synthrs", n_images=images, size=size, seed=0, captions_per_image=5, progress=False)
    manifest = ingest(IngestConfig(root=str(work / "synthrs"), out=str(work / "ingest")), progress=False).manifest
    frame, meta = read_manifest(manifest)
    rng = np.random.default_rng(0)
    noisy = rng.random(len(frame)) < 0.2
    scores = frame[["pair_id", "image_id", "scene", "split"]].copy()
    scores["indomain"] = np.where(noisy, rng.normal(0.1, 0.1, len(frame)), rng.normal(0.5, 0.1, len(frame)))
    scores["indomain_clipscore"] = 100 * scores["indomain"].clip(lower=0)
    scores["fused"] = scene_percentile(scores["indomain"], scores["scene"])
    scores["scene_percentile"] = scores["fused"]
    scores.to_parquet(work / "scores.parquet")
    cfg = load_config(None, updates={"select.scores": str(work / "scores.parquet"), "select.manifest": str(manifest),
                                     "select.out": str(work / "select"), "select.mode": "proxy",
                                     "select.plots": False, "tracking.enabled": False})  # fmt: skip
    select_ratios(cfg)

    train = frame[frame["split"] == "train"].sample(frac=0.1, random_state=0)
    rows = []
    for pair in train.itertuples():
        base = {"pair_id": pair.pair_id, "image_id": pair.image_id, "scene": pair.scene, "model": "synthrs"}
        rows.append({**base, "candidate_id": f"{pair.pair_id}@r0", "round": 0, "backend": "original",
                     "caption": pair.caption, "status": "original", "fused": 0.1, "layout": 0.5, "selected": False})
        rows.append({**base, "candidate_id": f"{pair.pair_id}@r1.0", "round": 1, "backend": "mask2text",
                     "caption": f"a {pair.scene} scene, repaired", "status": "scored", "fused": rng.uniform(0.3, 0.9),
                     "layout": 1.0, "selected": True})  # fmt: skip
    (work / "captions").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(work / "captions" / "captions.parquet")

    rejects = pd.read_parquet(work / "ingest" / "rejects.parquet")
    extra = [{"pair_id": f"x{i}:0", "image_id": f"x{i}", "image": f"images/missing_{i}.png", "caption": "gone",
              "scene": "forest", "split": "train", "reason": "missing_file", "detail": "does not exist"}
             for i in range(20)]  # fmt: skip
    pd.concat([rejects, pd.DataFrame(extra)]).to_parquet(work / "ingest" / "rejects.parquet")

    root = dataset_root(manifest, meta)
    test = frame[frame["split"] == "test"].groupby("image_id").head(1)
    gens = []
    (work / "generate" / "images").mkdir(parents=True, exist_ok=True)
    for arm, noise in ARMS.items():
        for pair in test.itertuples():
            real = np.asarray(load_rgb(root / pair.image).resize((64, 64)), dtype=np.float64)
            pixels = (1 - noise) * real + noise * rng.uniform(0, 255, real.shape)
            gen_id = f"{arm}-{pair.image_id}"
            Image.fromarray(pixels.astype(np.uint8)).save(work / "generate" / "images" / f"{gen_id}.png")
            gens.append({"gen_id": gen_id, "image_id": pair.image_id, "pair_id": pair.pair_id, "scene": pair.scene,
                         "prompt": pair.caption, "seed": 0, "path": f"images/{gen_id}.png", "arm": arm})
    pd.DataFrame(gens).to_parquet(work / "generate" / "generations.parquet")
    metric = {"scene": "all", "metric": "FD-indomain", "ci_low": 1.0, "ci_high": 2.0, "higher_is_better": False,
              "n_real": len(test), "n_generated": len(test), "extractor": "indomain:x", "feature_dim": 256.0,
              "resolution": "64x64"}  # fmt: skip
    results = {"protocol": {"n_real": len(test), "split": "test", "resolution": "64x64", "ci": 0.95, "bootstrap": 200},
               "metrics": [{**metric, "arm": arm, "value": 3 * noise} for arm, noise in ARMS.items()]}  # fmt: skip
    (work / "evaluate").mkdir(exist_ok=True)
    (work / "evaluate" / "results.json").write_text(json.dumps(results))
    return {"manifest": str(manifest), "scores": str(work / "scores.parquet"), "selection": str(work / "select"),
            "captions": str(work / "captions"), "ingest": str(work / "ingest"),
            "generations": str(work / "generate"), "evaluation": str(work / "evaluate")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="Keep the inputs here (default: a temporary folder).")
    parser.add_argument("--images", type=int, default=2000, help="SynthRS images (5 captions each).")
    parser.add_argument("--size", type=int, default=224, help="Image side in pixels (RSICD: 224).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        started = time.perf_counter()
        inputs = build_inputs(work, args.images, args.size)
        setup = time.perf_counter() - started
        out = work / "report"
        started = time.perf_counter()
        result = build_report(ReportConfig(**inputs, out=str(out)))
        seconds = time.perf_counter() - started
        summary = result.summary
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        figures = {
            "dataset": f"SynthRS {args.images} images x 5 captions ({summary['pairs']} pairs), {args.size} px PNG, "
                       f"{summary['scenes']} scenes; random scores with a 20% noisy tail; select proxy",
            "seconds": round(seconds, 2),
            "setup_seconds": round(setup, 1),
            "bytes": size,
            "megabytes": round(size / 1e6, 2),
            "html_bytes": summary["html_bytes"],
            "thumbnails": summary["thumbnails"],
            "counts": {k: summary[k] for k in ("pairs", "scenes", "dropped", "egl_replaced", "rejected",
                                               "sample_prompts", "metric_rows")},  # fmt: skip
            "settings": {k: v for k, v in ReportConfig().model_dump().items()
                         if k not in ("manifest", "scores", "selection", "captions", "ingest", "evaluation",
                                      "generations", "out")},  # fmt: skip
            "target_seconds": 60,
        }
        write_result("report_build", figures)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
