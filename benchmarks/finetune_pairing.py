"""Paired vs. epoch batch sampling: how much of the gap between two cleanings is their data, not batch order?

    python benchmarks/finetune_pairing.py --work /tmp/select-bench --base /tmp/t2i/b7/model

The dual loop compares LoRA trials that differ only by the pairs a ratio drops. With the ``epoch``
sampler, dropping one pair reshuffles every batch; with ``paired`` (the default), a batch slot keeps
its pair unless that pair was dropped (:func:`dldc.t2i.finetune.paired_indices`).

For each sampler, fine-tunes (demo ``finetune`` settings, ``--steps``) on the manifest cleaned at
each of ``--ratios`` (every scene at the same ratio, ranked by the work folder's scores, as
``dldc select-trial``), with each of ``--seeds``; then reports

* ``same_slot_share``: share of batch slots that draw the same pair in the two cleanings (seed 0);
* ``data_gap``: mean over seeds of ||W(r1) − W(r0)||, the LoRA weights' distance between the two
  cleanings' trials (same seed: same initialisation, noise and timesteps);
* ``seed_gap``: mean over ratios of ||W(seed a) − W(seed b)|| (mostly the LoRA initialisation,
  which the seed also draws: the scale of a weight distance, for reference);
* ``paired_over_epoch``: paired ``data_gap`` / epoch ``data_gap``. The epoch gap is the data's
  effect plus the reshuffled order's; what the paired sampler removes is order noise.

Inputs: ``<work>/ingest/manifest.parquet`` and ``<work>/scores/scores.parquet`` (from
``benchmarks/select_ratio.py``; their sha256 in ``inputs``). A fine-tune already finished in ``--out``
with the same fingerprint is reused by dldc: ``runs`` then says where from (fingerprint, date), and
``seconds`` (the fine-tunes' wall time) is ``null`` unless every one ran now. Writes
``benchmarks/results/finetune_pairing.json``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import reuse_note, write_result  # noqa: E402

from dldc.config import load_config  # noqa: E402
from dldc.io import file_sha256  # noqa: E402
from dldc.select.ranking import keep_mask, load_ranked, write_cleaned_manifest  # noqa: E402
from dldc.t2i.data import load_pairs  # noqa: E402
from dldc.t2i.finetune import ADAPTER_FILE, REPORT_FILE, batch_indices, finetune, pair_hashes  # noqa: E402


def lora_vector(adapter: Path) -> torch.Tensor:
    """Every LoRA tensor of an adapter, flattened in key order."""
    tensors = load_file(str(adapter / ADAPTER_FILE))
    return torch.cat([tensors[key].float().flatten() for key in sorted(tensors)])


def same_slot_share(pair_lists: list[list[str]], sampler: str, steps: int, batch: int, seed: int) -> float:
    """Share of (step, slot) draws that pick the same pair_id in two runs on the given pair lists."""
    same = total = 0
    hashes = [pair_hashes(ids) for ids in pair_lists]
    for step in range(steps):
        drawn = []
        for ids, hashed in zip(pair_lists, hashes):
            index = batch_indices(sampler, hashed, batch, step, 0, 1, seed)
            drawn.append([ids[i] for i in index.tolist()])
        same += sum(a == b for a, b in zip(*drawn))
        total += batch
    return same / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/select-bench"), help="a select_ratio.py work folder")
    parser.add_argument("--base", type=Path, default=Path("data/base/model"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/finetune-pairing"))
    parser.add_argument("--steps", type=int, default=100, help="LoRA steps (demo select.trial_steps)")
    parser.add_argument("--ratios", type=float, nargs=2, default=[0.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    args = parser.parse_args()
    manifest = args.work / "ingest" / "manifest.parquet"
    scores = args.work / "scores" / "scores.parquet"
    if not (manifest.is_file() and scores.is_file()):
        raise SystemExit(f"no manifest / scores in {args.work}: run benchmarks/select_ratio.py --work {args.work}")
    cfg = load_config(None, updates={"tracking.enabled": False})
    ranked = load_ranked(scores, manifest, list(cfg.select.splits))
    cleaned = {}
    for ratio in args.ratios:
        path = args.out / f"r{ratio}" / "cleaned_manifest.parquet"
        write_cleaned_manifest(manifest, ranked, keep_mask(ranked, {}, default=ratio), path, {"ratio": ratio})
        cleaned[ratio] = path
    pair_lists = [load_pairs(cleaned[r], list(cfg.select.splits), 8, max_pairs=None).pair_ids for r in args.ratios]

    figures: dict[str, Any] = {"steps": args.steps, "ratios": args.ratios, "seeds": args.seeds,
                               "pairs": [len(ids) for ids in pair_lists], "work": str(args.work),
                               "inputs": {"manifest_sha256": file_sha256(manifest),
                                          "scores_sha256": file_sha256(scores)}}
    runs: dict[str, dict[str, Any]] = {}  # per fine-tune: its seconds in this run, or the adapter it reused
    started = time.perf_counter()
    for sampler in ("epoch", "paired"):
        weights = {}
        for ratio, seed in itertools.product(args.ratios, args.seeds):
            out = args.out / sampler / f"r{ratio}-s{seed}"
            tune = cfg.finetune.model_copy(update={
                "base": str(args.base), "manifest": str(cleaned[ratio]), "out": str(out), "steps": args.steps,
                "seed": seed, "sampler": sampler, "sample_steps": 0, "threads": 2})  # fmt: skip
            _, runs[f"{sampler}/r{ratio}-s{seed}"] = reuse_note(
                lambda: finetune(tune, progress=True), out / REPORT_FILE, "fingerprint")  # noqa: B023
            weights[ratio, seed] = lora_vector(out)
        r0, r1 = args.ratios
        a, b = args.seeds
        data_gap = float(np.mean([(weights[r1, s] - weights[r0, s]).norm() for s in args.seeds]))
        seed_gap = float(np.mean([(weights[r, a] - weights[r, b]).norm() for r in args.ratios]))
        figures[sampler] = {
            "same_slot_share": same_slot_share(pair_lists, sampler, args.steps, cfg.finetune.batch_size, a),
            "data_gap": data_gap, "seed_gap": seed_gap,
        }
    figures["paired_over_epoch"] = figures["paired"]["data_gap"] / figures["epoch"]["data_gap"]
    figures["runs"] = runs
    # the fine-tunes' wall time, when every one ran now; else null (see runs for what was reused)
    figures["seconds"] = round(time.perf_counter() - started, 1) if all("seconds" in r for r in runs.values()) else None
    write_result("finetune_pairing", figures)


if __name__ == "__main__":
    main()
