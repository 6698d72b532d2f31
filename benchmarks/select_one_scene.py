"""One scene at a time: does cleaning a scene move *its own* column, and in step with its noise?

    python benchmarks/select_one_scene.py --work /tmp/select-bench --base data/base/model [--ratio 0.4] [--seeds 0 1]

The dual loop (``benchmarks/select_ratio.py``) reads r*(scene) from trials that clean *every* scene
at r. This benchmark asks what the scene's column could show at best, with the design the loop
avoids (``|scenes|`` trials per ratio): for each seed, one trial with no cleaning, then one trial per
scene that cleans only that scene at ``--ratio`` (``run_trial(..., scenes=[scene])``) and keeps every
pair of the others. Same data, scorer, trial settings and evaluation as ``select_ratio.py`` (it
reuses its ``--work`` folder, or builds it).

Per scene and seed: the change of the scene's own in-domain CLIP score and FD against the seed's
no-cleaning trial ("own"), and the mean change of the other nine scenes in the same trial
("spill-over", what cleaning this scene did to everyone else). If a scene's own column reflected its
own noise, the own change would grow with the true noise rate: the figure is the Spearman correlation,
across scenes, of the seed-averaged own change (FD: its negative) with the true rate. The same is
reported for the spill-over and for the whole held-out set (the ``all`` column): if a scene's noise
harms the model as a whole, cleaning it shows there. ``probe_rule``: r* = ``--ratio`` for the scenes
whose cleaning alone improved the whole held-out set, else 0, and its Spearman with the true rate.

A finished trial in ``--work`` is reused when its key (settings and inputs) matches: it then carries
``reused_from`` (key, date, its seconds then) in ``trial_runs``, and ``trials_s`` (the trials' time in
this run) is ``null`` unless every trial ran now.

Writes ``benchmarks/results/select_one_scene.json`` (another ``--ratio``: ``select_one_scene-rR.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import reuse_note, write_result  # noqa: E402
from select_ratio import prepare, setup_figures, spearman, trial_config, true_noise  # noqa: E402

METRICS = {"CLIPScore-indomain": 1.0, "FD-indomain": -1.0}  # sign that makes "better" positive


def main() -> None:
    from dldc.select.trial import TRIAL_FILE, run_trial

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/select-bench"))
    parser.add_argument("--base", type=Path, default=Path("data/base/model"), help="demo base (dldc build-base)")
    parser.add_argument("--ratio", type=float, default=0.4, help="the one scene's cleaning ratio")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tune seeds")
    parser.add_argument("--folds", type=int, default=2, help="in-domain scorer folds (as select_ratio.py's runs)")
    parser.add_argument("--epochs", type=int, default=8, help="in-domain scorer epochs")
    args = parser.parse_args()
    if not (args.base / "model_index.json").is_file():
        raise SystemExit(f"no demo base at {args.base}: run `dldc build-base` (or pass --base)")
    args.work.mkdir(parents=True, exist_ok=True)
    cfg, steps = prepare(args.work, args.folds, args.epochs, "none")
    truth = true_noise(args.work / "synthrs", Path(cfg.select.manifest))
    scenes = sorted(truth)

    trials: dict[str, dict[str, Any]] = {}  # per trial: its seconds in this run, or the trial it reused
    own: dict[str, dict[str, list[float]]] = {m: {s: [] for s in scenes} for m in METRICS}
    spill: dict[str, dict[str, list[float]]] = {m: {s: [] for s in scenes} for m in METRICS}
    overall: dict[str, dict[str, list[float]]] = {m: {s: [] for s in scenes} for m in METRICS}
    for seed in args.seeds:
        seeded = trial_config(cfg, args.work, args.base, seed)
        folder = args.work / "one-scene" / f"seed{seed}"
        report, trials[f"seed{seed}/none"] = reuse_note(
            lambda: run_trial(seeded, 0.0, folder / "none", progress=True),  # noqa: B023
            folder / "none" / TRIAL_FILE, "key")
        before = report["metrics"]
        for scene in scenes:
            name = f"{scene}-r{args.ratio:g}"
            report, trials[f"seed{seed}/{name}"] = reuse_note(
                lambda: run_trial(seeded, args.ratio, folder / name, progress=True, scenes=[scene]),  # noqa: B023
                folder / name / TRIAL_FILE, "key")
            after = report["metrics"]
            for metric in METRICS:
                change = {s: after[s][metric] - before[s][metric] for s in scenes}
                own[metric][scene].append(change[scene])
                spill[metric][scene].append(float(np.mean([change[s] for s in scenes if s != scene])))
                overall[metric][scene].append(after["all"][metric] - before["all"][metric])

    measured = [t["seconds"] for t in trials.values() if "seconds" in t]
    figures: dict[str, Any] = {
        "ratio": args.ratio, "seeds": args.seeds, "true_noise_by_scene": truth,
        "trial_steps": cfg.select.trial_steps, "sampler": cfg.finetune.sampler, **setup_figures(steps),
        # seconds of the trials run now (null unless all were); a reused trial says where it came from
        "trials": len(trials), "trials_s": round(sum(measured), 1) if len(measured) == len(trials) else None,
        "trial_runs": trials,
    }
    for metric, sign in METRICS.items():
        own_mean = {s: float(np.mean(v)) for s, v in own[metric].items()}
        net = {s: own_mean[s] - float(np.mean(spill[metric][s])) for s in scenes}
        spill_mean = {s: float(np.mean(v)) for s, v in spill[metric].items()}
        overall_mean = {s: float(np.mean(v)) for s, v in overall[metric].items()}
        figures[metric] = {
            "own_change": own[metric],
            "spill_over_change": spill[metric],
            "own_change_mean": own_mean,
            "spearman_own_vs_truth": spearman({s: sign * v for s, v in own_mean.items()}, truth),
            "spearman_own_minus_spill_vs_truth": spearman({s: sign * v for s, v in net.items()}, truth),
            "spearman_spill_over_vs_truth": spearman({s: sign * v for s, v in spill_mean.items()}, truth),
            "all_change": overall[metric],
            "spearman_all_vs_truth": spearman({s: sign * v for s, v in overall_mean.items()}, truth),
        }
        # A rule read afterwards from these trials (not a mode of dldc select): clean a scene at the
        # ratio exactly when cleaning it alone improved the whole held-out set.
        picked = {s: args.ratio if sign * v > 0 else 0.0 for s, v in overall_mean.items()}
        figures[metric]["probe_rule"] = {"ratios": picked, "spearman_vs_truth": spearman(picked, truth)}
        print(f"{metric}: Spearman of the own change vs. the true noise rate "
              f"{figures[metric]['spearman_own_vs_truth']:+.2f} (own − spill-over: "
              f"{figures[metric]['spearman_own_minus_spill_vs_truth']:+.2f}); of the spill-over "
              f"{figures[metric]['spearman_spill_over_vs_truth']:+.2f}; of the whole held-out set's (all) change "
              f"{figures[metric]['spearman_all_vs_truth']:+.2f}; probe rule's r* "
              f"{figures[metric]['probe_rule']['spearman_vs_truth']:+.2f}")
        for s in sorted(scenes, key=truth.get):
            print(f"  {s:12s} noise {truth[s]:.2f}  own {' '.join(f'{v:+.3f}' for v in own[metric][s])}  "
                  f"spill-over {' '.join(f'{v:+.3f}' for v in spill[metric][s])}")
    write_result("select_one_scene" if args.ratio == 0.4 else f"select_one_scene-r{args.ratio:g}", figures)


if __name__ == "__main__":
    main()
