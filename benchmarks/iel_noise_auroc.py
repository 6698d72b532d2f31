"""How well the cross-fitted in-domain scorer finds swapped captions on the real RSICD subset, and
how much repeated caption text leaks through its folds (image folds vs text-aware folds).

    python benchmarks/iel_noise_auroc.py [--epochs N] [--folds K] [--cross 0.15] [--within 0.15] [--work DIR]

Steps: ingest ../shared/data/rsicd-dev; swap captions (seeded): ``--cross`` of the images get all
the captions of a random image of *another* scene, a disjoint ``--within`` of the images those of
another image of the *same* scene (donors are unswapped images, so the copied text sits on two
images; each swapped image remembers its donor); train the in-domain
scorer twice on that one corrupted manifest, same settings and seed, only the fold rule differs —
``image`` (folds by image: the earlier behaviour, "before") and ``text`` (images sharing a
normalised caption text share a fold, the drop rule for groups too large: "after",
:func:`dldc.iel.folds.group_folds`); score every pair with ``dldc score`` (the engine) per arm.

Reported per arm (both measured in this run; ``--work`` may reuse a trained arm only when the
digest of its settings and of the manifest's bytes matches, and then says ``reused_from``):

* ``auroc``: "low fused score = swapped", cross-scene swaps vs genuine pairs and within-scene
  swaps vs genuine pairs, also per signal (cosine, scene fit);
* ``leak``: swapped pairs whose donor image sat in another fold than the recipient vs in the
  same fold, mean fused score and scene fit, and the gap (other − same) with a 95% bootstrap
  interval (recipient images resampled). Grouped two ways: by the *image* fold assignment (the
  same pairs in both arms: did the gap close?) and by the arm's own folds;
* ``repeated_text``: among genuine pairs, the share whose normalised text also sits on another
  image, overall and in the bottom / top 20% by fused score, and the mean cosine / scene fit of
  repeated vs unique texts; the bottom 20% of each scene (what `dldc select` drops); the same by
  how many images carry the text; the share of texts that sat on a training image of their scorer;
* ``fold_rule``: what the rule did (components, split ones, dropped training pairs per fold).

The AUROC is the Mann–Whitney rank statistic (ties count one half,
:func:`dldc.iel.indomain.rank_auroc`), no sklearn. Findings (benchmarks/README.md): with text folds
the within-scene AUROC rises from below chance to ~0.51, the donor-fold gap closes, the
cross-scene AUROC stays above 0.90; the contrastive side plateaus at ~0.85 on its own (fold-0
sweeps of architectures, sizes and losses, 2026-11: a from-scratch tower on ~1,500 images at
64 px), hence the scene head, which cannot see within-scene errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, cached_step, write_result  # noqa: E402

from dldc.config import IndomainConfig, IngestConfig, ScoreConfig  # noqa: E402
from dldc.data.ingest import ingest  # noqa: E402
from dldc.data.manifest import MANIFEST_SCHEMA, dataset_root, read_manifest, write_manifest  # noqa: E402
from dldc.evaluate.bootstrap import percentile_interval  # noqa: E402
from dldc.iel.engine import score_manifest  # noqa: E402
from dldc.iel.indomain import FOLDS_FILE, assign_folds, text_keys, train_indomain  # noqa: E402
from dldc.iel.indomain import rank_auroc as auroc  # noqa: E402

KINDS = {"cross": "noise:other_scene", "within": "noise:same_scene"}
BOOTSTRAP = 2000


def corrupt(frame: pd.DataFrame, cross: float, within: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give ``cross`` of the images the captions of a random other-scene image, a disjoint ``within``
    those of a random other image of the same scene (donors: images that keep their captions).

    Returns:
        The corrupted manifest rows (same pair ids, ``caption_source`` marks the swap) and, aligned
        with them, ``kind`` (``genuine``, ``cross``, ``within``) and ``donor`` (image id or None).
    """
    rng = np.random.default_rng(seed)
    images = frame.drop_duplicates("image_id")[["image_id", "scene"]].sort_values("image_id")
    image_ids = images["image_id"].to_numpy()
    scenes = images["scene"].to_numpy()
    order = rng.permutation(len(image_ids))
    n_cross, n_within = round(cross * len(image_ids)), round(within * len(image_ids))
    chosen = {"cross": order[:n_cross], "within": order[n_cross : n_cross + n_within]}
    # Donors are unswapped images, so a donor still carries the text its recipient got.
    unswapped = np.ones(len(image_ids), dtype=bool)
    unswapped[order[: n_cross + n_within]] = False
    captions = frame.groupby("image_id", sort=True)["caption"].apply(list).to_dict()
    out = frame.copy()
    kind = np.full(len(out), "genuine", dtype=object)
    donor_of = np.full(len(out), None, dtype=object)
    row_image = out["image_id"].to_numpy()
    for name, picks in chosen.items():
        for index in sorted(picks.tolist()):
            same = scenes == scenes[index]
            pool = np.flatnonzero(unswapped & (~same if name == "cross" else same))
            donor = image_ids[rng.choice(pool)]
            rows = np.flatnonzero(row_image == image_ids[index])
            for k, row in enumerate(rows):
                out.iloc[row, out.columns.get_loc("caption")] = captions[donor][k % len(captions[donor])]
                out.iloc[row, out.columns.get_loc("caption_source")] = KINDS[name]
            kind[rows], donor_of[rows] = name, donor
    return out, pd.DataFrame({"kind": kind, "donor": donor_of})


def gap_with_interval(values: np.ndarray, other: np.ndarray, images: np.ndarray, seed: int) -> dict:
    """Mean of ``values`` where ``other`` minus where not, with a 95% interval from resampling images."""
    frame = pd.DataFrame({"v": values, "other": other, "image": images})
    n_other, n_same = int(other.sum()), int((~other).sum())
    out = {"n_other_fold": n_other, "n_same_fold": n_same}
    if n_other == 0 or n_same == 0:
        return {**out, "gap": None, "interval": None}
    per_image = frame.groupby(["image", "other"])["v"].agg(["sum", "count"]).reset_index()
    groups = {flag: per_image[per_image["other"] == flag] for flag in (True, False)}
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(BOOTSTRAP):
        means = []
        for flag in (True, False):
            g = groups[flag]
            draw = rng.integers(0, len(g), len(g))
            means.append(g["sum"].to_numpy()[draw].sum() / g["count"].to_numpy()[draw].sum())
        replicates.append(means[0] - means[1])
    low, high = percentile_interval(np.array(replicates), 0.95)
    gap = float(values[other].mean() - values[~other].mean())
    return {**out, "gap": round(gap, 4), "interval": [round(low, 4), round(high, 4)]}


def leak_figures(scored: pd.DataFrame, truth: pd.DataFrame, folds: dict[str, int], seed: int) -> dict:
    """Donor-in-other-fold vs same-fold swapped pairs under the fold assignment ``folds``."""
    out = {}
    for kind in ("cross", "within", "all"):
        rows = truth["kind"].to_numpy() != "genuine" if kind == "all" else truth["kind"].to_numpy() == kind
        recipient = scored["image_id"].to_numpy()[rows]
        other = np.array([folds[r] != folds[d] for r, d in zip(recipient, truth["donor"].to_numpy()[rows])])
        figures = {}
        for column in ("fused", "indomain_scenefit", "indomain"):
            values = scored[column].to_numpy()[rows]
            figures[column] = {
                "mean_other_fold": round(float(values[other].mean()), 4) if other.any() else None,
                "mean_same_fold": round(float(values[~other].mean()), 4) if (~other).any() else None,
            }
        figures["fused"].update(gap_with_interval(scored["fused"].to_numpy()[rows], other, recipient, seed))
        out[kind] = figures
    genuine = truth["kind"].to_numpy() == "genuine"
    signals = ("fused", "indomain_scenefit", "indomain")
    out["genuine_mean"] = {c: round(float(scored[c][genuine].mean()), 4) for c in signals}
    return out


def repeated_text_figures(scored: pd.DataFrame, keys: np.ndarray, truth: pd.DataFrame, folds: dict[str, int]) -> dict:
    """Genuine pairs whose normalised text also sits on another image: share overall, in the bottom
    and top 20% by fused score (what a 0.2 cleaning ratio drops / keeps first), mean signals.

    Also: the bottom 20% *of each scene* (what ``dldc select`` drops at a ratio of 0.2), the same
    figures by how many images carry the text (1, 2, 3-5, 6+: copy-paste vs RSICD's generic
    sentences), and the share of pairs whose text sat on a training image of the fold model that
    scored them (``folds``, the arm's own; before the drop rule, which dropped nothing here).
    """
    image_ids = scored["image_id"].to_numpy()
    images_per_key = pd.Series(image_ids).groupby(keys).nunique()
    carriers = images_per_key.reindex(keys).to_numpy()
    repeated = carriers > 1
    genuine = truth["kind"].to_numpy() == "genuine"
    fused = scored["fused"].to_numpy()[genuine]
    rep = repeated[genuine]
    order = np.argsort(fused, kind="stable")
    tail = round(0.2 * len(order))
    # Per-scene bottom 20%: rank within the scene, ties broken by row order.
    scene_rank = pd.Series(fused).groupby(scored["scene"].to_numpy()[genuine]).rank(method="first", pct=True)
    scene_bottom = scene_rank.to_numpy() <= 0.2
    fold = np.array([folds[image] for image in image_ids])
    folds_per_key = pd.Series(fold).groupby(keys).nunique()
    seen = folds_per_key.reindex(keys).to_numpy()[genuine] > 1  # the text sits in another fold too
    words = np.array([len(key.split()) for key in keys[genuine]])
    figures = {
        "genuine_pairs": int(genuine.sum()),
        "share_overall": round(float(rep.mean()), 4),
        "share_bottom_20": round(float(rep[order[:tail]].mean()), 4),
        "share_top_20": round(float(rep[order[-tail:]].mean()), 4),
        "share_bottom_20_within_scene": round(float(rep[scene_bottom].mean()), 4),
        "text_in_scorers_training": round(float(seen.mean()), 4),
    }
    by_carriers = {}
    for label, low, high in (("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6+", 6, None)):
        rows = (carriers[genuine] >= low) & ((carriers[genuine] <= high) if high else True)
        by_carriers[label] = {
            "share_overall": round(float(rows.mean()), 4),
            "share_bottom_20_within_scene": round(float(rows[scene_bottom].mean()), 4),
            "mean_fused": round(float(fused[rows].mean()), 4),
            "mean_words": round(float(words[rows].mean()), 2),
            "text_in_scorers_training": round(float(seen[rows].mean()), 4),
        }
    figures["by_images_per_text"] = by_carriers
    for column in ("indomain", "indomain_scenefit", "fused"):
        values = scored[column].to_numpy()[genuine]
        figures[f"mean_{column}"] = {
            "repeated": round(float(values[rep].mean()), 4),
            "unique": round(float(values[~rep].mean()), 4),
        }
        if column != "fused":  # which signal puts repeated texts at the top
            by_signal = np.argsort(np.nan_to_num(values, nan=0.0), kind="stable")
            figures[f"share_bottom_20_by_{column}"] = round(float(rep[by_signal[:tail]].mean()), 4)
    # Are the repeated captions the generic, shorter ones?
    figures["mean_words"] = {
        "repeated": round(float(words[rep].mean()), 2),
        "unique": round(float(words[~rep].mean()), 2),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = IndomainConfig()
    parser.add_argument("--cross", type=float, default=0.15, help="share of images given another scene's captions")
    parser.add_argument("--within", type=float, default=0.15, help="share given another same-scene image's captions")
    parser.add_argument("--architecture", default=defaults.architecture)
    parser.add_argument("--folds", type=int, default=defaults.folds)
    # 8 epochs is the RSICD-dev optimum: held-out alignment peaks there and declines after.
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)  # the paper profile's; SynthRS-400 uses 32
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images-per-scene", type=int, default=0, help="keep the first N images per scene (0: all)")
    parser.add_argument("--arms", default="image,text", help="fold rules to train, in order")
    parser.add_argument("--work", type=Path, default=None, help="keep trained arms here (reused by digest)")
    parser.add_argument("--name", default="iel_noise_auroc", help="result file name in benchmarks/results")
    args = parser.parse_args()

    source = SHARED_DATA / "rsicd-dev"
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(f"ingesting {source}", flush=True)
        start = time.perf_counter()
        result = ingest(IngestConfig(root=str(source), out=str(Path(scratch) / "ingest")), progress=False)
        ingest_s = time.perf_counter() - start
        frame, meta = read_manifest(result.manifest)
        if args.images_per_scene:
            images = frame.drop_duplicates("image_id").sort_values("image_id")
            keep = images.groupby("scene").head(args.images_per_scene)
            frame = frame[frame["image_id"].isin(set(keep["image_id"]))].reset_index(drop=True)
        root = dataset_root(result.manifest, meta)
        noisy_frame, truth = corrupt(frame, args.cross, args.within, args.seed)
        meta.root = str(root)  # the corrupted manifest lives elsewhere: keep an absolute root
        noisy_manifest = work / "noisy" / "manifest.parquet"
        write_manifest(noisy_manifest, noisy_frame[MANIFEST_SCHEMA.names].to_dict("records"), meta)
        swapped = pd.DataFrame({"kind": truth["kind"], "image": noisy_frame["image_id"]}).groupby("kind")["image"]
        print(f"images per kind: {swapped.nunique().to_dict()}", flush=True)
        keys = np.asarray(text_keys(open_clip.get_tokenizer("ViT-B-32"), noisy_frame["caption"].tolist()), dtype=object)
        images = noisy_frame.drop_duplicates("image_id")
        image_folds = assign_folds(images["image_id"].tolist(), images["scene"].tolist(), args.folds, args.seed)

        arms = {}
        for rule in args.arms.split(","):
            cfg = IndomainConfig(
                manifest=str(noisy_manifest),
                out=str(work / f"arm-{rule}" / "scorer"),
                architecture=args.architecture,
                folds=args.folds,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_steps=args.warmup_steps,
                seed=args.seed,
                device=args.device,
                fold_groups=rule,
            )
            settings = cfg.model_dump(mode="json", exclude={"manifest", "out"})
            print(f"[{rule}] training {cfg.folds} fold models ({cfg.architecture}, {cfg.epochs} epochs)", flush=True)
            step = cached_step(
                work / f"arm-{rule}",
                {"step": "train_indomain", "settings": settings},
                lambda _folder, cfg=cfg: {"report": train_indomain(cfg, progress=False)},
                [noisy_manifest],
            )
            report = step["result"]["report"]
            print(f"[{rule}] scoring every pair (dldc score)", flush=True)
            start = time.perf_counter()
            score_cfg = ScoreConfig(
                manifest=str(noisy_manifest),
                out=str(Path(scratch) / f"scores-{rule}"),
                scorers=[f"indomain:{cfg.out}"],
                batch_size=256,
            )
            scored = score_manifest(score_cfg, progress=False).frame
            score_s = time.perf_counter() - start
            if not (scored["pair_id"].to_numpy() == noisy_frame["pair_id"].to_numpy()).all():
                raise RuntimeError("score rows are not aligned with the manifest rows")
            arm_folds = pd.read_parquet(Path(cfg.out) / FOLDS_FILE).set_index("image_id")["fold"].to_dict()
            kind = truth["kind"].to_numpy()
            views = {
                "fused": -scored["fused"].to_numpy(),
                "contrastive": -scored["indomain"].to_numpy(),
                "scenefit": -scored["indomain_scenefit"].fillna(0.0).to_numpy(),
            }
            aurocs = {}
            for swap in ("cross", "within"):
                rows = (kind == swap) | (kind == "genuine")  # each kind of swap against the genuine pairs
                aurocs[swap] = {name: round(auroc(view[rows], kind[rows] == swap), 4) for name, view in views.items()}
            arms[rule] = {
                "auroc": aurocs,
                "leak_by_image_folds": leak_figures(scored, truth, image_folds, args.seed),
                "leak_by_own_folds": leak_figures(scored, truth, arm_folds, args.seed),
                "repeated_text": repeated_text_figures(scored, keys, truth, arm_folds),
                "fold_rule": report.get("fold_rule"),
                "fold_sizes": report["fold_sizes"],
                "heldout_mean": report["heldout_mean"],
                "train_seconds": report["timings"]["train_s"],
                "score_seconds": round(score_s, 1),
                "reused_from": step.get("reused_from"),
            }
            print(f"[{rule}] {json.dumps(arms[rule]['auroc'])}", flush=True)
        settings = {k: v for k, v in settings.items() if k != "fold_groups"}

    figures = {
        "dataset": f"rsicd-dev ({noisy_frame['image_id'].nunique()} images, {len(noisy_frame)} pairs, "
        f"{noisy_frame['scene'].nunique()} scenes, 224 px JPEG)",
        "noise": {
            "cross": "all captions of an image replaced by those of a random image of another scene",
            "within": "all captions of an image replaced by those of another random image of the same scene",
            "image_rate": {"cross": args.cross, "within": args.within},
            "pairs": {k: int(v) for k, v in truth["kind"].value_counts().items()},
        },
        "settings": settings,
        "arms": arms,
        "seconds": {"ingest": round(ingest_s, 1), "total": round(time.perf_counter() - total_start, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    write_result(args.name, figures)


if __name__ == "__main__":
    main()
