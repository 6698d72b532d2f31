"""Ratio-selection benchmark: does r* per scene track each scene's true caption-noise rate?

    python benchmarks/select_ratio.py [--work /tmp/select-bench] [--mode proxy|loop|both] [--base data/base/model]

* **data** — SynthRS (demo profile: 400 images, 64 px, seed 0) with caption noise that differs by
  scene (``synth.noise_rate_by_scene``: 0% in two scenes up to 40% in two others), ingested. The
  EGL is *not* run: it would repair captions and blur the true noise rate the benchmark compares
  with; the selection ranks by the IEL scores of the original captions.
* **scores** — the demo in-domain scorer (cross-fitted; ``--folds``/``--epochs`` to shorten) and
  ``dldc score``.
* **truth** — each scene's noise rate over its *train* pairs, from ``truth/noise_labels.jsonl``
  (a benchmark may read it, a cleaning stage never does).
* **proxy** — ``dldc select --mode proxy``: r* per scene; Spearman of r* vs. the true rate
  (target ≥ 0.7).
* **loop** — ``dldc select-trial`` for every ratio of the demo grid (demo trial settings), then
  ``dldc select --mode loop``; Spearman as above; then the three arms (no cleaning, the global
  ratio, per-scene r*) fine-tuned with the demo ``finetune`` settings and the same seed, generated
  on the test prompts (same seeds) and evaluated together (in-domain CLIP score, FD, KD with
  bootstrap intervals). Targets: per-scene beats no cleaning on CLIP score and FD, and is no
  worse than the global ratio. The loop's selection is also redone with ``select.tolerance`` 0.5, 1
  (the one-standard-error rule) and 2 on the same trials (``tolerance_sweep``).

``--noise-kinds`` restricts SynthRS's noise kinds (e.g. the three that stay within the image's scene,
without ``other_scene``) and writes ``select_ratio-KIND+KIND.json``.

The scorer sees unaugmented views by default (``--augment none``, as the shipped ``params.yaml``: SynthRS
captions name positions); ``--augment dihedral`` (the code default, flips and 90° turns) writes
``select_ratio-dihedral.json`` instead.

``--work`` keeps every step for the next run: the data, the scorer and the scores are reused when
the digest of their settings and inputs matches the one in their ``cache.json``
(``_common.cached_step``), the trials, adapters and images when dldc's own fingerprints match. The
result file reads the settings from those records (``setup``, ``scorer``, ``noise_kinds``), and
a reused step, trial or fine-tune carries ``reused_from`` (digest, date, and its seconds in the run
that made it) instead of a time of this run (``trials_s`` is ``null`` unless every trial ran now).

Writes ``benchmarks/results/select_ratio.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_step, cached_synthrs_ingest, provenance, reuse_note, write_result  # noqa: E402

from dldc.config import load_config  # noqa: E402
from dldc.data.manifest import image_id_for  # noqa: E402
from dldc.data.synthrs import NOISE_KINDS  # noqa: E402

TOLERANCES = (0.5, 1.0, 2.0)
NOISE_BY_SCENE = {
    "airport": 0.0,
    "beach": 0.0,
    "desert": 0.1,
    "farmland": 0.1,
    "forest": 0.2,
    "industrial": 0.2,
    "lake": 0.3,
    "parking": 0.3,
    "residential": 0.4,
    "river": 0.4,
}


def noise_labels(synth_root: Path, manifest: Path) -> pd.DataFrame:
    """The manifest's rows with SynthRS's ground truth ``noisy`` (is the caption wrong?) per pair."""
    from dldc.data.manifest import read_manifest

    labels = pd.DataFrame(map(json.loads, (synth_root / "truth" / "noise_labels.jsonl").open()))
    labels["k"] = labels.groupby("filename").cumcount()
    labels["pair_id"] = labels["filename"].map(lambda f: image_id_for(f"images/{f}")) + ":" + labels["k"].astype(str)
    frame, _ = read_manifest(manifest)
    return frame.merge(labels[["pair_id", "noisy"]], on="pair_id", how="left")


def true_noise(synth_root: Path, manifest: Path) -> dict[str, float]:
    """Share of noisy captions among each scene's train pairs (SynthRS ground truth)."""
    frame = noise_labels(synth_root, manifest)
    train = frame[frame["split"] == "train"]
    return {str(s): float(v) for s, v in train.groupby("scene")["noisy"].mean().items()}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    scenes = sorted(set(a) & set(b))
    return float(pd.Series([a[s] for s in scenes]).corr(pd.Series([b[s] for s in scenes]), method="spearman"))


def prepare(
    work: Path, folds: int | None, epochs: int | None, augment: str, noise_kinds: list[str] | None = None,
    noise_by_scene: dict[str, float] | None = None, seed: int | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """SynthRS with per-scene noise → ingest → in-domain scorer → scores, each reused from ``work`` on a digest match.

    ``noise_by_scene`` (default :data:`NOISE_BY_SCENE`) and ``seed`` (``synth.seed``, default the
    demo's) make another draw of the same benchmark data (``benchmarks/select_attribution.py``).

    Returns:
        The configuration and the four steps as :func:`_common.cached_step` gives them (the settings
        each step was made with, its digest, and its seconds or where it was reused from).
    """
    from dldc.iel.engine import score_manifest
    from dldc.iel.indomain import train_indomain

    updates: dict[str, Any] = {
        "tracking.enabled": False,
        "synth.out": str(work / "synthrs"),
        "synth.noise_rate_by_scene": noise_by_scene or NOISE_BY_SCENE,
        "synth.noise_kinds": noise_kinds,
        "ingest.root": str(work / "synthrs"),
        "ingest.out": str(work / "ingest"),
        "indomain.manifest": str(work / "ingest" / "manifest.parquet"),
        "indomain.out": str(work / "scorer"),
        "indomain.augment": augment,
        "score.manifest": str(work / "ingest" / "manifest.parquet"),
        "score.out": str(work / "scores"),
        "score.scorers": [f"indomain:{work / 'scorer'}"],
        "select.scores": str(work / "scores" / "scores.parquet"),
        "select.manifest": str(work / "ingest" / "manifest.parquet"),
        "select.trials": str(work / "trials"),
        "finetune.steps": 300,  # pinned (the demo dvc repro uses fewer)
        "generate.prompts_per_image": None,  # every caption of each test / val image
        "select.trial_prompts_per_image": None,
    }
    if seed is not None:
        updates["synth.seed"] = seed
    if folds:
        updates["indomain.folds"] = folds
    if epochs:
        updates["indomain.epochs"] = epochs
    cfg = load_config(None, updates=updates)
    s = cfg.synth

    def settings(section: Any, *paths: str) -> dict[str, Any]:
        return {k: v for k, v in section.model_dump(mode="json").items() if k not in paths}

    steps = cached_synthrs_ingest(work / "synthrs", settings(s, "out"), cfg.ingest, progress=True)
    steps["scorer"] = cached_step(
        work / "scorer",
        {"step": "scorer", "indomain": settings(cfg.indomain, "manifest", "out"), "ingest": steps["ingest"]["digest"]},
        lambda out: train_indomain(cfg.indomain, progress=True),
    )
    steps["scores"] = cached_step(
        work / "scores",
        {"step": "scores", "score": settings(cfg.score, "manifest", "out", "scorers", "cache"),
         "ingest": steps["ingest"]["digest"], "scorer": steps["scorer"]["digest"]},
        lambda out: score_manifest(cfg.score, progress=True).report,
    )  # fmt: skip
    return cfg, steps


def setup_figures(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The data and scorer a run used, read from the steps' records (not from this run's arguments)."""
    synth, scorer = steps["synthrs"]["config"]["synth"], steps["scorer"]["config"]["indomain"]
    return {
        "configured_noise_by_scene": synth["noise_rate_by_scene"],
        "noise_kinds": synth["noise_kinds"] or "all",
        "scorer": {"folds": scorer["folds"], "epochs": scorer["epochs"], "augment": scorer["augment"]},
        "setup": {name: {"digest": step["digest"], **provenance(step)} for name, step in steps.items()},
    }


def trial_config(cfg: Any, work: Path, base: Path, seed: int | None = None) -> Any:
    """The benchmark's trial settings: fine-tune and generate from ``base``, judge with ``work``'s scorer."""
    spec = f"indomain:{work / 'scorer'}"
    finetune = {"base": str(base)} if seed is None else {"base": str(base), "seed": seed}
    return cfg.model_copy(
        update={
            "finetune": cfg.finetune.model_copy(update=finetune),
            "generate": cfg.generate.model_copy(update={"base": str(base)}),
            "evaluate": cfg.evaluate.model_copy(
                update={"feature_scorers": {"indomain": spec}, "clip_scorers": {"indomain": spec}}
            ),
        }
    )


def run_arms(cfg: Any, work: Path, manifests: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """One LoRA per arm's manifest (``cfg.finetune``, reused by fingerprint), generated on the same test prompts
    and evaluated together against arm ``none``.

    Returns:
        Per arm the fine-tune's seconds or where it was reused from; the generation's per-arm counts (and its
        seconds when no arm's images were reused); the evaluation result.
    """
    from dldc.evaluate.evaluate import evaluate_generations
    from dldc.t2i.finetune import REPORT_FILE, finetune
    from dldc.t2i.generate import generate_images

    arms, finetunes = {}, {}
    for arm, manifest in manifests.items():
        out = work / "adapters" / arm
        tune = cfg.finetune.model_copy(update={"manifest": str(manifest), "out": str(out)})
        _, finetunes[arm] = reuse_note(lambda: finetune(tune, progress=True), out / REPORT_FILE,  # noqa: B023
                                       "fingerprint")
        arms[arm] = str(out)
    started = time.perf_counter()
    gen = generate_images(
        cfg.generate.model_copy(update={"arms": arms, "manifest": cfg.select.manifest, "out": str(work / "gen")}),
        progress=True,
    )
    generated = {"arms": gen.report["arms"]}  # per arm: images generated now, reused from an earlier run
    if not any(counts["reused"] for counts in gen.report["arms"].values()):
        generated["seconds"] = round(time.perf_counter() - started, 1)
    result = evaluate_generations(
        [gen.out], cfg.select.manifest, work / "evaluate", cfg=cfg.evaluate.model_copy(update={"base_arm": "none"}),
        progress=True,
    )
    return finetunes, generated, result


def run_loop(cfg: Any, work: Path, base: Path) -> dict[str, Any]:
    """Trials over the grid, selection, then the three arms fine-tuned, generated and evaluated together."""
    from dldc.select.selection import select_ratios
    from dldc.select.trial import TRIAL_FILE, run_trial, trial_dir_name

    cfg = trial_config(cfg, work, base)
    cfg = cfg.model_copy(update={"select": cfg.select.model_copy(update={"out": str(work / "select-loop")})})
    trials = {}  # ratio: seconds in this run, or the trial it reused
    for ratio in cfg.select.grid:
        folder = work / "trials" / trial_dir_name(ratio)
        _, trials[f"{ratio:g}"] = reuse_note(lambda: run_trial(cfg, ratio, folder, progress=True),  # noqa: B023
                                             folder / TRIAL_FILE, "key")
    chosen = select_ratios(cfg, mode="loop")
    sweep = {}  # the same trials under other tolerances (one-SE rule = 1)
    for tolerance in TOLERANCES:
        other = cfg.model_copy(update={"select": cfg.select.model_copy(
            update={"tolerance": tolerance, "out": str(work / f"select-loop-tol{tolerance:g}"), "plots": False})})
        sweep[f"{tolerance:g}"] = select_ratios(other, mode="loop").selection["ratios"]
    manifests = {
        "none": Path(cfg.select.manifest),
        "global": chosen.out / "global" / "cleaned_manifest.parquet",
        "per_scene": chosen.out / "cleaned_manifest.parquet",
    }
    finetunes, generated, result = run_arms(cfg, work, manifests)
    final = {}
    for arm in manifests:
        final[arm] = {m: result.value(arm, m) for m in ("CLIPScore-indomain", "FD-indomain", "KD-indomain")}
    comparisons = {
        f"per_scene_vs_{other}.{m}": result.compare("per_scene", other, m)
        for other in ("none", "global")
        for m in ("CLIPScore-indomain", "FD-indomain")
    }
    measured = [t["seconds"] for t in trials.values() if "seconds" in t]
    return {"selection": chosen.selection, "final": final, "comparisons": comparisons, "tolerance_sweep": sweep,
            # seconds of the trials run now; a reused trial says where it came from instead
            "trials_s": round(sum(measured), 1) if len(measured) == len(trials) else None, "trials": trials,
            "finetunes": finetunes, "generate": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/select-bench"))
    parser.add_argument("--mode", choices=["proxy", "loop", "both"], default="both")
    parser.add_argument("--base", type=Path, default=Path("data/base/model"), help="demo base (dldc build-base)")
    parser.add_argument("--folds", type=int, help="in-domain scorer folds (demo: 5)")
    parser.add_argument("--epochs", type=int, help="in-domain scorer epochs (demo: 20)")
    parser.add_argument("--augment", choices=["none", "dihedral"], default="none",
                        help="in-domain scorer views (default none, as the shipped params.yaml)")
    parser.add_argument("--noise-kinds", nargs="+", choices=NOISE_KINDS,
                        help="SynthRS noise kinds (default: all four); writes select_ratio[-AUGMENT]-KIND+KIND.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg, steps = prepare(args.work, args.folds, args.epochs, args.augment, args.noise_kinds)
    truth = true_noise(args.work / "synthrs", Path(cfg.select.manifest))
    figures: dict[str, Any] = {"true_noise_by_scene": truth, "grid": cfg.select.grid,
                               "egl": "not run (keeps the true noise rate known)", "sampler": cfg.finetune.sampler,
                               **setup_figures(steps)}
    if args.mode in ("proxy", "both"):
        from dldc.select.selection import select_ratios

        proxy_cfg = cfg.model_copy(update={"select": cfg.select.model_copy(update={"out": str(args.work / "proxy")})})
        chosen = select_ratios(proxy_cfg, mode="proxy").selection
        figures["proxy"] = {"ratios": chosen["ratios"], "global_ratio": chosen["global_ratio"],
                            "penalty": cfg.select.proxy_penalty, "spearman_vs_truth": spearman(chosen["ratios"], truth)}
    if args.mode in ("loop", "both"):
        if not (args.base / "model_index.json").is_file():
            raise SystemExit(f"no demo base at {args.base}: run `dldc build-base` (or pass --base)")
        loop = run_loop(cfg, args.work, args.base)
        chosen = loop["selection"]
        figures["loop"] = {"ratios": chosen["ratios"], "global_ratio": chosen["global_ratio"],
                           "spearman_vs_truth": spearman(chosen["ratios"], truth), "final": loop["final"],
                           "comparisons": loop["comparisons"], "trials_s": loop["trials_s"], "trials": loop["trials"],
                           "finetunes": loop["finetunes"], "generate": loop["generate"],
                           "tolerance": cfg.select.tolerance,
                           "paired_se_at_r0": {scene: errors.get("0") for scene, errors in
                                               chosen["objective"].get("paired_se", {}).items()},
                           "tolerance_sweep": {tol: {"ratios": ratios, "spearman_vs_truth": spearman(ratios, truth)}
                                               for tol, ratios in loop["tolerance_sweep"].items()}}
    name = "select_ratio" if args.augment == "none" else f"select_ratio-{args.augment}"
    if args.noise_kinds:
        name += "-" + "+".join(sorted(args.noise_kinds))
    write_result(name, figures)


if __name__ == "__main__":
    main()
