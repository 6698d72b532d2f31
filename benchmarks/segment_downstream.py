"""Downstream segmentation benchmark: real only vs. + synthetic from base / raw / clean, both protocols.

    python benchmarks/segment_downstream.py --base data/base/model \\
        --raw data/finetune/raw --clean data/finetune/clean [--work /tmp/segment-bench] [--steps 300]

* **SynthRS arms** — SynthRS with the demo settings (400 images, 64 px, seed 0; regenerated in
  ``--work`` unless ``--synthrs`` points at one), split by tile 60/20/20 with the demo
  ``segment`` settings; arms: ``real``, and real + ``synthetic_per_arm`` images from the base
  alone, the raw-data adapter and the cleaned-data adapter, under both mask protocols
  (``pseudo-label``, ``layout-prompt``). Same segmenter, steps, batch and seed for every arm.
  ``layout-prompt`` keeps the images that the real-only segmenter reads as their layout on at least
  half of the pixels (``segment.layout_filter``); each arm's layout fidelity is reported.
  The adapters are whatever ``--raw`` / ``--clean`` name (the demo chain's ``dldc finetune``
  outputs, or the t2i_cleaning benchmark's noisy / truth-cleaned adapters).
* **Dubai real-only baseline** — ``../shared/data/dubai-seg`` with the README's true colours,
  images scaled by ``--dubai-scale`` and cut into ``--patch``-px patches, real arm only.

The SynthRS arms run once per ``--seeds`` entry (prompts, images, initialisation and batch order;
the split stays): at this budget a run's mIoU moves by several points from seed to seed, more than
the bootstrap intervals over test tiles show, so the clean − raw margin is reported per seed and as
the mean with its seed SD. Reports mIoU / mAcc with 95% bootstrap intervals over test tiles, each
arm's layout fidelity, and the training budget. A skipped part (``--skip-dubai``) keeps its figures
from the last run, with ``reused_from`` (its settings' digest, date and command). dldc reuses a
trained run in ``--work`` whose fingerprint (settings + data) matches and rendered images whose
settings hold; a part that reused any reports ``seconds_this_run`` and what it ``reused`` (run
fingerprints and dates, image counts) instead of ``seconds``. The regenerated SynthRS is reused when
the digest of its settings matches its ``cache.json``. Writes ``benchmarks/results/segment_downstream.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import SHARED_DATA, cached_step, config_digest, provenance, write_result  # noqa: E402

from dldc.config import SegmentConfig  # noqa: E402
from dldc.segment.experiment import run_segment  # noqa: E402


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, run in report["runs"].items():
        out[name] = {
            "mIoU": round(100 * run["mIoU"], 2),
            "mAcc": round(100 * run["mAcc"], 2),
            "mIoU_ci95": [round(100 * v, 2) for v in run["ci"].get("mIoU", [])],
            "mAcc_ci95": [round(100 * v, 2) for v in run["ci"].get("mAcc", [])],
            "train_patches": run["train_patches"],
            "per_class_IoU": {c: None if v != v else round(100 * v, 1) for c, v in run["IoU"].items()},
        }
    return out


def reuse(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """What a ``run_segment`` call reused from earlier runs in ``out``: trained runs and rendered images."""
    from dldc.segment.trainer import REPORT_FILE

    runs = {}
    for name, run in report["runs"].items():
        if run.get("reused"):
            record = out / "runs" / name / REPORT_FILE
            date = datetime.fromtimestamp(record.stat().st_mtime, UTC).isoformat(timespec="seconds")
            runs[name] = {"digest": json.loads(record.read_text(encoding="utf-8"))["fingerprint"], "date": date}
    images = {arm: counts["reused"] for arm, counts in report.get("synthetic", {}).items() if counts.get("reused")}
    return {k: v for k, v in (("runs", runs), ("images", images)) if v}


def weights(base: str, *adapters: str) -> dict[str, str]:
    """Digests of the base and the adapters' weights (what the synthetic arms were drawn from)."""
    from dldc.io import file_sha256
    from dldc.t2i.finetune import ADAPTER_FILE, base_digest

    return {"base": base_digest(base, None)} | {
        a: file_sha256(Path(a) / ADAPTER_FILE) for a in adapters if (Path(a) / ADAPTER_FILE).is_file()}


def timed(seconds: float, reused: dict[str, Any]) -> dict[str, Any]:
    """A part's seconds: a stage time when nothing was reused, else this run's time beside what it reused."""
    if not reused:
        return {"seconds": round(seconds, 1)}
    return {"seconds_this_run": round(seconds, 1), "reused": reused}


def budget(cfg: SegmentConfig) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "widths": cfg.widths,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "patch_size": cfg.patch_size,
        "lr": cfg.lr,
        "class_weighting": cfg.class_weighting,
        "seed": cfg.seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/segment-bench"))
    parser.add_argument("--synthrs", type=Path, help="an existing SynthRS folder (default: regenerate the demo one)")
    parser.add_argument("--base", default="data/base/model")
    parser.add_argument("--raw", default="data/finetune/raw")
    parser.add_argument("--clean", default="data/finetune/clean")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--synthetic", type=int, default=120, help="synthetic images per arm")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--class-weighting", choices=["inverse_sqrt", "none"], default="inverse_sqrt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="SynthRS arms: one full run per seed (prompts, images, init, batch order)")
    parser.add_argument("--skip-synthrs", action="store_true")
    parser.add_argument("--skip-dubai", action="store_true")
    parser.add_argument("--dubai-scale", type=float, default=0.25)
    parser.add_argument("--patch", type=int, default=64, help="Dubai patch size")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"command": " ".join(sys.argv)}

    if not args.skip_dubai:
        cfg = SegmentConfig(
            dataset="dubai", root=str(SHARED_DATA / "dubai-seg"), scale=args.dubai_scale, patch_size=args.patch,
            protocols=[], steps=args.steps, batch_size=args.batch_size, threads=args.threads,
            class_weighting=args.class_weighting, out=str(args.work / "dubai"),
        )  # fmt: skip
        started = time.perf_counter()
        report = run_segment(cfg)
        figures["dubai_real_only"] = {
            "budget": budget(cfg),
            "scale": cfg.scale,
            "data": report["data"],
            "digest": config_digest(cfg.model_dump(mode="json", exclude={"out"})),
            **timed(time.perf_counter() - started, reuse(report, Path(cfg.out))),
            **_figures(report)["real"],
        }

    if not args.skip_synthrs:
        root, synthrs = args.synthrs, None
        if root is None:
            from dldc.data.synthrs import write_synthrs

            root, synth = args.work / "synthrs", {"n_images": 400, "size": 64, "seed": 0}
            synthrs = cached_step(root, {"step": "synthrs", "synth": synth}, lambda out: write_synthrs(out, **synth))
        per_seed: dict[int, dict[str, Any]] = {}
        reused: dict[str, Any] = {}
        configs = []
        started = time.perf_counter()
        for seed in args.seeds:
            cfg = SegmentConfig(
                root=str(root), base=args.base, arms={"base": "", "raw": args.raw, "clean": args.clean},
                steps=args.steps, batch_size=args.batch_size, synthetic_per_arm=args.synthetic, threads=args.threads,
                class_weighting=args.class_weighting, seed=seed,
                out=str(args.work / ("synthrs-arms" if seed == 0 else f"synthrs-arms-seed{seed}")),
            )  # fmt: skip
            report = run_segment(cfg)
            configs.append(cfg.model_dump(mode="json", exclude={"out"}))
            if found := reuse(report, Path(cfg.out)):
                reused[str(seed)] = found
            per_seed[seed] = {"runs": _figures(report), "synthetic": report["synthetic"], "data": report["data"],
                              "table": (Path(cfg.out) / "results.md").read_text(encoding="utf-8")}
        runs0 = per_seed[args.seeds[0]]["runs"]
        protocols = sorted({name.split("/")[0] for name in runs0 if "/" in name})
        mean = {
            name: {m: round(float(np.mean([per_seed[s]["runs"][name][m] for s in args.seeds])), 2)
                   for m in ("mIoU", "mAcc")}
            for name in runs0
        }  # fmt: skip
        margins = {p: [round(per_seed[s]["runs"][f"{p}/clean"]["mIoU"] - per_seed[s]["runs"][f"{p}/raw"]["mIoU"], 2)
                       for s in args.seeds] for p in protocols}  # fmt: skip
        fidelity = {arm: [round(per_seed[s]["synthetic"][arm]["layout_fidelity"], 4) for s in args.seeds]
                    for arm in per_seed[args.seeds[0]]["synthetic"]}  # fmt: skip
        figures["synthrs_arms"] = {
            "budget": {**budget(cfg), "seed": list(args.seeds)},
            "synthetic_per_arm": cfg.synthetic_per_arm,
            "layout_filter": cfg.layout_filter,
            "adapters": {"raw": args.raw, "clean": args.clean, "base": args.base},
            "data": per_seed[args.seeds[0]]["data"],
            "synthrs": {"folder": str(root),
                        **({"digest": synthrs["digest"], **provenance(synthrs)} if synthrs else {})},
            "digest": config_digest({"configs": configs, "weights": weights(args.base, args.raw, args.clean)}),
            **timed(time.perf_counter() - started, reused),
            "seeds": list(args.seeds),
            "mean_over_seeds": mean,
            "clean_minus_raw_mIoU": {p: round(float(np.mean(v)), 2) for p, v in margins.items()},
            "clean_minus_raw_mIoU_per_seed": margins,
            "clean_minus_raw_mIoU_seed_sd": {p: round(float(np.std(v, ddof=1)), 2) if len(v) > 1 else None
                                             for p, v in margins.items()},  # fmt: skip
            "layout_fidelity_per_seed": fidelity,
            "per_seed": {str(s): v for s, v in per_seed.items()},
        }
    previous = Path(__file__).resolve().parent / "results" / "segment_downstream.json"
    if previous.is_file():  # a skipped part keeps its figures from the last run that made them, and says so
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        for part in ("dubai_real_only", "synthrs_arms"):
            if part not in figures and part in earlier:
                kept = {k: v for k, v in earlier[part].items() if k not in {"from_run", "run_date"}}
                source = kept.get("reused_from") or {"digest": kept.get("digest"),
                                                     "date": earlier[part].get("run_date") or earlier.get("date"),
                                                     "command": earlier[part].get("from_run") or earlier.get("command")}
                figures[part] = {**kept, "reused_from": source}
    write_result("segment_downstream", figures)


if __name__ == "__main__":
    main()
