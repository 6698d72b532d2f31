"""Per-scene cleaning-ratio selection: ranking and cut, fallback, proxy objective, loop objective, a tiny loop run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dldc.config import ConfigError, load_config
from dldc.data.manifest import read_manifest
from dldc.iel.fuse import scene_percentile
from dldc.select.objective import choose, loop_curves, proxy_curves
from dldc.select.ranking import keep_mask, n_dropped, rank_within_scene

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_manifest, random_scores, train_tiny_scorer  # noqa: E402


def test_ranking_and_cut_per_scene_known_answer() -> None:
    frame = pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(10)],
            "scene": ["a"] * 6 + ["b"] * 4,
            "fused": [0.9, 0.1, 0.5, np.nan, 0.3, 0.3, 0.2, 0.8, 0.4, 0.6],
            "cleanable": [True] * 9 + [False],  # p9 is held out: never ranked, never dropped
        }
    )
    ranked = rank_within_scene(frame)
    # Scene a: NaN first (unscorable pairs go first), then 0.1, then the 0.3 tie broken by pair_id.
    assert ranked.set_index("pair_id").loc[["p3", "p1", "p4", "p5", "p2", "p0"], "rank"].tolist() == list(range(6))
    assert ranked.loc[ranked.pair_id == "p9", "rank"].item() == -1
    keep = keep_mask(ranked, {"a": 0.5, "b": 0.34})
    assert sorted(ranked.loc[~keep, "pair_id"]) == ["p1", "p3", "p4", "p6"]  # floor(3), floor(1.02)
    assert keep[ranked.pair_id == "p9"].item()
    assert (n_dropped(0.3, 10), n_dropped(0.29, 10), n_dropped(0.1, 9)) == (3, 2, 0)
    with pytest.raises(KeyError, match="'b'"):
        keep_mask(ranked, {"a": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        n_dropped(1.0, 4)


def test_small_scenes_fall_back_to_the_global_ratio_and_say_so() -> None:
    curves = {"big": {0.0: 0.0, 0.1: 1.0, 0.3: 0.5}, "tiny": {0.0: 0.0, 0.1: 0.0, 0.3: 9.0}}
    overall = {0.0: 0.0, 0.1: 0.2, 0.3: 0.7}
    picks = choose(curves, overall, {"big": 100, "tiny": 5, "nocurve": 50}, min_scene_pairs=20)
    assert picks.global_ratio == 0.3
    assert picks.ratios == {"big": 0.1, "nocurve": 0.3, "tiny": 0.3}
    assert set(picks.fallbacks) == {"tiny", "nocurve"}
    assert "min_scene_pairs=20" in picks.fallbacks["tiny"] and "no per-scene curve" in picks.fallbacks["nocurve"]
    flat = choose({"a": {0.0: 1.0, 0.2: 1.0}}, {0.0: 1.0, 0.2: 1.0}, {"a": 50}, 1)
    assert flat.ratios == {"a": 0.0}  # ties keep more data


def _synthetic_scores(noise_by_scene: dict[str, float], n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Cosines: clean pairs ~ N(0.6, 0.05), noisy ones ~ N(0.1, 0.05); fused = within-scene percentile."""
    rng = np.random.default_rng(seed)
    rows = []
    for scene, rate in noise_by_scene.items():
        noisy = rng.random(n) < rate
        cos = np.where(noisy, rng.normal(0.1, 0.05, n), rng.normal(0.6, 0.05, n))
        rows += [{"pair_id": f"{scene}{i}", "scene": scene, "x": c} for i, c in enumerate(cos)]
    frame = pd.DataFrame(rows)
    frame["x_clipscore"] = 100 * frame["x"].clip(lower=0)
    frame["fused"] = scene_percentile(frame["x"], frame["scene"])
    return frame


def test_proxy_objective_tracks_the_noise_rate_of_each_scene() -> None:
    noise = {"clean": 0.0, "some": 0.2, "much": 0.4}
    ranked = rank_within_scene(_synthetic_scores(noise))
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    curves, overall = proxy_curves(ranked, grid, penalty=1.0)
    picks = choose(curves, overall, {s: 200 for s in noise}, min_scene_pairs=20)
    # Every noisy pair lies below every clean one: the knee is at the noise rate (±one grid step).
    assert picks.ratios["clean"] == 0.0
    assert abs(picks.ratios["some"] - 0.2) <= 0.1 and abs(picks.ratios["much"] - 0.4) <= 0.1
    assert picks.ratios["clean"] < picks.ratios["some"] < picks.ratios["much"]
    assert 0.2 <= picks.global_ratio <= 0.4  # one ratio for all: between the scenes' noise rates


# What the trials' evaluations record for each metric (its `higher_is_better`).
DIRECTIONS = {"CLIPScore-x": True, "FD-x": False}


def test_loop_objective_from_per_ratio_metric_tables() -> None:
    # Scene a is best at r=0.2 on both metrics; scene b at r=0 by CLIP score, at 0.4 by FD: the weights decide.
    trials = {
        0.0: {"all": {"CLIPScore-x": 20.0, "FD-x": 5.0}, "a": {"CLIPScore-x": 10.0, "FD-x": 9.0},
              "b": {"CLIPScore-x": 30.0, "FD-x": 3.0}},
        0.2: {"all": {"CLIPScore-x": 22.0, "FD-x": 4.0}, "a": {"CLIPScore-x": 15.0, "FD-x": 5.0},
              "b": {"CLIPScore-x": 29.5, "FD-x": 3.0}},
        0.4: {"all": {"CLIPScore-x": 21.0, "FD-x": 4.5}, "a": {"CLIPScore-x": 12.0, "FD-x": 7.0},
              "b": {"CLIPScore-x": 29.6, "FD-x": 1.0}},
    }  # fmt: skip
    loop = loop_curves(trials, {"CLIPScore-x": 1.0, "FD-x": 1.0}, DIRECTIONS)  # no replicates: min-max scaling
    curves, overall = loop.curves, loop.overall
    assert curves["a"] == {0.0: 0.0, 0.2: 1.0, 0.4: pytest.approx(0.5 * 0.4 + 0.5 * 0.5)}
    assert overall[0.2] == 1.0 and loop.margins == {} and loop.scaling["a"] == "min-max"
    picks = choose(curves, overall, {"a": 50, "b": 50}, 10)
    assert picks.ratios == {"a": 0.2, "b": 0.4} and picks.global_ratio == 0.2
    clip_only = loop_curves(trials, {"CLIPScore-x": 1.0}, DIRECTIONS).curves
    assert choose(clip_only, overall, {"a": 50, "b": 50}, 10).ratios["b"] == 0.0
    missing = {0.0: {"all": {"FD-x": 1.0}, "a": {"FD-x": 1.0}}, 0.2: {"all": {"FD-x": 0.5}}}
    assert "a" not in loop_curves(missing, {"FD-x": 1.0}, DIRECTIONS).curves  # a scene without every trial has no curve


def test_loop_objective_one_standard_error_rule_with_paired_replicates() -> None:
    # Replicates = value + a_r * [1, -1, 1, -1]: every trial's bootstrap SD is 1, and the paired
    # difference of two ratios has SD |a_r - a_s| (same draws in every trial).
    pattern, shift = np.array([1.0, -1.0, 1.0, -1.0]), {0.0: 1.0, 0.2: -1.0, 0.4: 1.0}
    values = {"flat": {0.0: 10.0, 0.2: 10.5, 0.4: 10.2}, "gains": {0.0: 10.0, 0.2: 15.0, 0.4: 16.0}}
    trials = {r: {s: {"CLIPScore-x": v[r]} for s, v in values.items()} for r in shift}
    replicates = {r: {s: {"CLIPScore-x": v[r] + shift[r] * pattern} for s, v in values.items()} for r in shift}
    loop = loop_curves(trials, {"CLIPScore-x": 1.0}, DIRECTIONS, replicates, tolerance=1.0)
    assert loop.curves["flat"] == pytest.approx({0.0: 0.0, 0.2: 0.5, 0.4: 0.2})  # gain over r=0 in SDs
    assert loop.curves["gains"] == pytest.approx({0.0: 0.0, 0.2: 5.0, 0.4: 6.0})
    assert loop.margins["flat"] == pytest.approx({0.0: 2.0, 0.2: 0.0, 0.4: 2.0})  # best is r=0.2 (a = -1)
    assert loop.margins["gains"] == pytest.approx({0.0: 0.0, 0.2: 2.0, 0.4: 0.0})  # best is r=0.4 (a = +1)
    assert loop.scaling == {"flat": "bootstrap-sd", "gains": "bootstrap-sd"}
    overall = {0.0: 0.0, 0.2: 1.0, 0.4: 0.5}
    picks = choose(loop.curves, overall, {"flat": 50, "gains": 50}, 10, loop.margins)
    # flat: 0.5 SD better at 0.2, but within 2 paired SEs: keep everything; gains: 0.2 is within 2 of 0.4's 6
    assert picks.ratios == {"flat": 0.0, "gains": 0.2}
    assert "within the margin" in picks.reasons["flat"]
    strict = loop_curves(trials, {"CLIPScore-x": 1.0}, DIRECTIONS, replicates, tolerance=0.0)
    assert choose(strict.curves, overall, {"flat": 50, "gains": 50}, 10, strict.margins).ratios == {
        "flat": 0.2, "gains": 0.4}
    # A metric measured ten times more noisily counts ten times less.
    noisy = {r: {s: {"CLIPScore-x": 10 * (rep["CLIPScore-x"] - values[s][r]) + values[s][r]}
                 for s, rep in per.items()} for r, per in replicates.items()}
    assert loop_curves(trials, {"CLIPScore-x": 1.0}, DIRECTIONS, noisy).curves["gains"][0.4] == pytest.approx(0.6)


def test_select_config_checks() -> None:
    cfg = load_config(None)
    assert cfg.select.mode == "calibrate" and cfg.select.eval_split == "val" and 0.0 in cfg.select.grid
    assert "FID" in load_config(None, overrides=["profile=paper"]).select.objective
    with pytest.raises(ConfigError, match="grid"):
        load_config(None, overrides=["select.grid=[0.0, 1.0]"])
    with pytest.raises(ConfigError, match="eval_split"):
        load_config(None, overrides=["select.eval_split=train"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, overrides=["select.ratio_grid=[0.1]"])


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """20 SynthRS images (4 scenes), their scores (a third of the train captions marked low), a base, a scorer."""
    from dldc.t2i.models import save_dummy_base

    work = tmp_path_factory.mktemp("select")
    manifest = make_manifest(work / "data", n_images=20, size=16)
    frame, _ = read_manifest(manifest)
    random_scores(frame).to_parquet(work / "scores.parquet")
    scorer = train_tiny_scorer(manifest, work / "scorer", folds=2, epochs=1)
    return {
        "work": str(work),
        "manifest": str(manifest),
        "scores": str(work / "scores.parquet"),
        "base": str(save_dummy_base(work / "base")),
        "scorer": str(scorer),
    }


def _tiny_cfg(project: dict[str, str], **extra: object):
    work = Path(project["work"])
    spec = f"indomain:{project['scorer']}"
    updates = {
        "tracking.enabled": False,
        "select.scores": project["scores"],
        "select.manifest": project["manifest"],
        "select.out": str(work / "select"),
        "select.trials": str(work / "trials"),
        "select.grid": [0.0, 0.5],
        "select.mode": "loop",
        "select.eval_split": "test",
        "select.min_scene_pairs": 4,
        "select.trial_steps": 2,
        "select.trial_prompts_per_image": 1,
        "select.trial_generate_steps": 1,
        "finetune.base": project["base"],
        "finetune.resolution": 8,
        "finetune.rank": 2,
        "finetune.batch_size": 4,
        "finetune.warmup_steps": 1,
        "finetune.device": "cpu",
        "generate.batch_size": 8,
        "generate.device": "cpu",
        "evaluate.feature_scorers": {"indomain": spec},
        "evaluate.clip_scorers": {"indomain": spec},
        "evaluate.kid_subsets": 2,
        "evaluate.kid_subset_size": 4,
        "evaluate.device": "cpu",
        "evaluate.workers": 0,
        **extra,
    }
    return load_config(None, updates=updates)


@pytest.mark.slow
def test_one_scene_trial_cleans_only_that_scene(tiny_project: dict[str, str], tmp_path: Path) -> None:
    from dldc.select.trial import run_trial, trial_key

    cfg = _tiny_cfg(tiny_project)
    with pytest.raises(ValueError, match="scenes must name scenes"):
        run_trial(cfg, 0.5, tmp_path / "nowhere", progress=False, scenes=["glacier"])
    report = run_trial(cfg, 0.5, tmp_path / "beach", progress=False, scenes=["beach"])
    source, _ = read_manifest(tiny_project["manifest"])
    cleaned, _ = read_manifest(tmp_path / "beach" / "cleaned_manifest.parquet")
    train = source[source.split == "train"]
    n_beach = int((train.scene == "beach").sum())
    assert report["dropped_pairs"] == n_dropped(0.5, n_beach) > 0 and report["scenes"] == ["beach"]
    missing = source[~source["pair_id"].isin(cleaned["pair_id"])]
    assert set(missing["scene"]) == {"beach"} and set(missing["split"]) == {"train"}  # the others keep every pair
    assert report["key"] != trial_key(cfg, 0.5) and "beach" in report["metrics"]


@pytest.mark.slow
def test_tiny_loop_end_to_end_writes_selection_manifests_and_logs(
    tiny_project: dict[str, str], mlflow_uri: str
) -> None:
    import mlflow

    from dldc.select.trial import read_trials, run_plan_row, run_trial, trial_dir_name
    from dldc.stages import run_select

    cfg = _tiny_cfg(tiny_project)
    trials = Path(cfg.select.trials)
    reports = {r: run_trial(cfg, r, trials / trial_dir_name(r), progress=False) for r in cfg.select.grid}
    # The same loop through the plan's rows (what dvc.yaml and Kubeflow run): one ratio per row, spare slots idle.
    rows = _tiny_cfg(tiny_project, **{"select.trials": str(trials.parent / "trials-rows")})
    by_row = [run_plan_row(rows, row, Path(rows.select.trials) / f"row{row}", progress=False) for row in (0, 1, 2)]
    assert [r.get("ratio") for r in by_row[:2]] == [0.0, 0.5] and by_row[2]["idle"]
    assert by_row[1]["plan"]["label"] == "r=0.5" and by_row[1]["judge_left_out"] > 0
    assert set(read_trials(rows.select.trials, [0.0, 0.5])) == {0.0, 0.5}  # the idle slot is passed over
    assert reports[0.0]["dropped_pairs"] == 0 and reports[0.5]["dropped_pairs"] > 0
    assert {"all", "beach"} <= set(reports[0.5]["metrics"]) and "FD-indomain" in reports[0.5]["metrics"]["all"]
    again = run_trial(cfg, 0.5, trials / trial_dir_name(0.5), progress=False)
    assert again["seconds"] == reports[0.5]["seconds"]  # same inputs: nothing recomputed
    assert set(read_trials(trials, [0.0, 0.5])) == {0.0, 0.5}
    with pytest.raises(FileNotFoundError, match="select-trial --row I. \(select.mode loop\) or .--ratio R"):
        read_trials(trials, [0.0, 0.3])

    tracked = _tiny_cfg(tiny_project, **{"tracking.enabled": True, "tracking.uri": mlflow_uri,
                                         "tracking.experiment": "t-select"})
    run_select(tracked, progress=False)
    out = Path(tracked.select.out)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["mode"] == "loop" and set(selection["ratios"]) == {"beach", "farmland", "forest", "residential"}
    assert set(selection["ratios"].values()) <= {0.0, 0.5} and selection["global_ratio"] in (0.0, 0.5)
    assert set(selection["metric_curves"]["all"]["CLIPScore-indomain"]) == {"0", "0.5"}
    assert all(scene in selection["reasons"] for scene in selection["ratios"])
    assert selection["objective"]["scaling"]["beach"] == "bootstrap-sd"  # trials carry paired replicates
    assert set(selection["objective"]["margins"]["beach"]) == {"0", "0.5"}

    source, _ = read_manifest(tiny_project["manifest"])
    fused = pd.read_parquet(tiny_project["scores"]).set_index("pair_id")["fused"]
    cleaned, meta = read_manifest(out / "cleaned_manifest.parquet")
    dropped = pd.read_parquet(out / "dropped.parquet")
    assert len(cleaned) + len(dropped) == len(source)  # every pair is kept or recorded as dropped
    assert set(dropped["split"]) <= {"train"}
    assert (cleaned["split"] == "test").sum() == (source["split"] == "test").sum()
    for scene, ratio in selection["ratios"].items():
        n = (source[(source.scene == scene) & (source.split == "train")]).shape[0]
        assert (dropped.scene == scene).sum() == int(np.floor(ratio * n + 1e-9))
        kept_train = cleaned[(cleaned.scene == scene) & (cleaned.split == "train")]["pair_id"]
        if (dropped.scene == scene).any():  # dropped pairs are the lowest of their scene
            assert dropped.loc[dropped.scene == scene, "fused"].max() <= fused[kept_train].min()
    assert meta.extra["select"]["ratios"] == selection["ratios"]
    from dldc.data.manifest import dataset_root

    assert (dataset_root(out / "cleaned_manifest.parquet", meta) / cleaned["image"].iloc[0]).is_file()
    global_manifest, _ = read_manifest(out / "global" / "cleaned_manifest.parquet")
    assert len(global_manifest) == selection["pairs"]["kept_global_baseline"]
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["baseline"]) == {"none", "global", "per_scene"} and "CLIPScore-indomain" in table.columns
    assert table.loc[(table.baseline == "none") & (table.scene == "all"), "dropped"].item() == 0
    assert {"plots/histograms.png", "plots/curves.png", "plots/metric_curves.png"} == set(selection["plots"])

    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("t-select")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'select'")
    assert "global_ratio" in run.data.metrics and run.data.tags["select.mode"] == "loop"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"selection.json", "cleaned_manifest.parquet", "dropped.parquet", "plots"} <= logged

    proxy = run_select(_tiny_cfg(tiny_project, **{"select.out": str(Path(tiny_project["work"]) / "proxy")}),
                       mode="proxy", progress=False)
    assert proxy.selection["mode"] == "proxy" and proxy.selection["trials"] == {}


def test_scores_that_do_not_cover_the_manifest_are_refused(tiny_project: dict[str, str], tmp_path: Path) -> None:
    from dldc.select.ranking import load_ranked

    partial = pd.read_parquet(tiny_project["scores"]).iloc[3:]
    partial.to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(ValueError, match="lacks scores for 3 pairs"):
        load_ranked(tmp_path / "scores.parquet", tiny_project["manifest"], ["train"])
    with pytest.raises(FileNotFoundError, match="dldc caption"):
        load_ranked(tmp_path / "none.parquet", tiny_project["manifest"], ["train"])


# ---------------------------------------------------------------- calibrate / attribute (issue 22)


@pytest.mark.parametrize("factors", [1, 3, 4, 7, 10, 11, 19, 26, 31])
def test_plackett_burman_columns_are_orthogonal_and_balanced(factors: int) -> None:
    from dldc.select.design import design_order, foldover, plackett_burman

    design = plackett_burman(factors)
    n = design_order(factors)
    assert design.shape == (n, factors) and n % 4 == 0 and n >= factors + 1
    assert (design.T @ design == n * np.eye(factors)).all()  # orthogonal
    assert (design.sum(axis=0) == 0).all()  # balanced: every scene cleaned in half the trials
    folded = foldover(design)
    assert folded.shape == (2 * n, factors) and (folded.T @ folded == 2 * n * np.eye(factors)).all()
    assert design_order(10) == 12 and design_order(31) == 32  # the 10 SynthRS / 31 RSICD scenes


def test_screening_regression_recovers_known_effects_and_foldover_removes_interaction_bias() -> None:
    from dldc.select.design import fit_effects, foldover, plackett_burman

    truth = np.array([0.8, -0.5, 0.0, 0.3, 0.0, 1.2, 0.0, -0.1, 0.0, 0.4])
    design = plackett_burman(10)
    linear = 2.0 + design @ truth / 2  # an effect is high − low: the slope on ±1 is half of it
    fit = fit_effects(design, linear)
    assert np.allclose(fit.effects, truth, atol=1e-9) and fit.residual_df == 1
    assert np.allclose(fit.se_residual, 0.0, atol=1e-9)  # an exactly linear response leaves no residual

    # A two-scene interaction biases the main effects of the 12-run design; the foldover removes it.
    folded = foldover(design)
    interacting = 2.0 + folded @ truth / 2 + 0.6 * folded[:, 0] * folded[:, 1]
    assert np.allclose(fit_effects(folded, interacting).effects, truth, atol=1e-9)
    biased = 2.0 + design @ truth / 2 + 0.6 * design[:, 0] * design[:, 1]
    assert not np.allclose(fit_effects(design, biased).effects, truth, atol=1e-3)

    # Replicates that shift every trial by the same amount (paired draws) add no uncertainty to an effect;
    # independent noise per trial does, about 2σ/sqrt(N).
    rng = np.random.default_rng(0)
    shared = linear[:, None] + rng.normal(0, 1.0, size=(1, 400))
    assert np.allclose(fit_effects(design, linear, shared).se_bootstrap, 0.0, atol=1e-9)
    independent = linear[:, None] + rng.normal(0, 0.5, size=(12, 4000))
    se = fit_effects(design, linear, independent).se_bootstrap
    assert np.allclose(se, 2 * 0.5 / np.sqrt(12), rtol=0.1)
    with pytest.raises(ValueError, match="cannot fit"):
        fit_effects(design[:5], linear[:5])
    with pytest.raises(ValueError, match="-1 or \\+1"):
        fit_effects(design * 2, linear)


def test_precision_weighted_ratio_follows_the_stronger_evidence() -> None:
    from dldc.select.design import Z80, combine_ratio, equivalent_z

    floor = 0.1 / np.sqrt(12)
    helps = combine_ratio(0.3, 0.05, z=6.0, level=0.3, sd_floor=floor, cap=0.9)
    hurts = combine_ratio(0.3, 0.05, z=-10.0, level=0.3, sd_floor=floor, cap=0.9)
    silent = combine_ratio(0.3, 0.05, z=0.0, level=0.3, sd_floor=floor, cap=0.9)
    assert abs(helps.ratio - 0.3) < 1e-3 and helps.attribution_ratio > 0.299
    assert hurts.ratio < 0.1 and hurts.attribution_ratio < 1e-6  # clear harm pulls r* down
    assert silent.ratio == pytest.approx(0.3) and silent.attribution_weight == 0.0  # no sign: the proxy alone
    # Precision weighting, by hand: both SDs at the floor → the plain mean; the interval is ±Z80·sd.
    even = combine_ratio(0.4, 0.0, z=-50.0, level=0.2, sd_floor=0.05, cap=0.9)
    assert even.ratio == pytest.approx(0.2) and even.sd == pytest.approx(0.05 / np.sqrt(2))
    assert even.high - even.low == pytest.approx(2 * Z80 * even.sd)
    capped = combine_ratio(0.95, 0.0, z=50.0, level=0.95, sd_floor=0.01, cap=0.9)
    assert capped.ratio == 0.9 and capped.high == 0.9
    no_bootstrap = combine_ratio(0.3, None, z=-3.0, level=0.3, sd_floor=floor, cap=0.9)
    assert no_bootstrap.attribution_weight > 0.9  # an unmeasured proxy SD counts as uninformative
    # An SE of 0 or NaN is no evidence, and one residual degree of freedom is weaker evidence than a normal z.
    assert equivalent_z([1.0, 1.0], [0.0, np.nan]).tolist() == [0.0, 0.0]
    assert 0 < equivalent_z(3.0, 1.0, 1.0) < equivalent_z(3.0, 1.0, 10.0) < 3.0


def test_proxy_interval_is_narrow_for_a_clear_tail_and_reproducible() -> None:
    from dldc.select.objective import proxy_intervals

    ranked = rank_within_scene(_synthetic_scores({"clean": 0.0, "much": 0.4}, n=200))
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    first = proxy_intervals(ranked, grid, penalty=1.0, draws=200)
    assert first == proxy_intervals(ranked, grid, penalty=1.0, draws=200)  # seeded per scene
    assert first["clean"]["high"] <= 0.1 and 0.3 <= first["much"]["low"] <= first["much"]["high"] <= 0.5
    assert proxy_intervals(ranked, grid, penalty=1.0, draws=0) == {}


def _mode_cfg(project: dict[str, str], mode: str, **extra: object):
    work = Path(project["work"])
    return _tiny_cfg(project, **{"select.mode": mode, "select.trials": str(work / f"trials-{mode}"),
                                 "select.out": str(work / f"select-{mode}"), "select.proxy_bootstrap": 50,
                                 "select.calibrate_levels": [0.0, 1.0, 2.0], "select.rows": [0, 1, 2], **extra})


def test_plans_of_each_mode(tiny_project: dict[str, str]) -> None:
    from dldc.select.plan import plan_rows_needed, plan_trials

    calibrate = plan_trials(_mode_cfg(tiny_project, "calibrate"))
    proxy = calibrate.proxy_ratios
    assert [row == {s: min(level * proxy[s], 0.9) for s in proxy}
            for row, level in zip(calibrate.rows, calibrate.levels)] == [True] * 3
    assert calibrate.judge_cuts == proxy and plan_rows_needed(calibrate, [0, 1, 2]) is None

    attribute = plan_trials(_mode_cfg(tiny_project, "attribute"))
    assert attribute.factors == sorted(proxy) and len(attribute.rows) == 8  # 4 scenes: the 8-run design
    for signs, row in zip(attribute.design, attribute.rows):
        for scene, sign in zip(attribute.factors, signs):
            assert row[scene] == (attribute.high[scene] if sign > 0 else 0.0)
            assert attribute.high[scene] >= 0.1  # select.attribute_floor
    assert "the select_rows parameter) to [0, 1, 2, 3, 4, 5, 6, 7]" in plan_rows_needed(attribute, [0, 1, 2])
    folded = plan_trials(_mode_cfg(tiny_project, "attribute", **{"select.foldover": True}))
    assert len(folded.rows) == 16 and folded.digest != attribute.digest
    unfiltered = plan_trials(_mode_cfg(tiny_project, "calibrate", **{"select.judge_filter": False}))
    assert unfiltered.judge_cuts == {} and unfiltered.digest != calibrate.digest


@pytest.mark.slow
def test_tiny_calibrate_and_attribute_end_to_end(tiny_project: dict[str, str]) -> None:
    from dldc.select.plan import plan_trials
    from dldc.select.trial import run_plan_row
    from dldc.stages import run_select

    cfg = _mode_cfg(tiny_project, "calibrate")
    trials = Path(cfg.select.trials)
    with pytest.raises(FileNotFoundError, match="no finished calibrate trial for rows \\[0, 1, 2\\]"):
        run_select(cfg, progress=False)
    reports = [run_plan_row(cfg, row, trials / f"row{row}", progress=False) for row in (0, 1, 2, 3)]
    assert reports[3]["idle"] and reports[3]["rows"] == 3  # a spare slot finishes at once
    assert reports[0]["dropped_pairs"] == 0 and reports[0]["plan"]["label"] == "λ=0"
    plan = plan_trials(cfg)
    cleaned, _ = read_manifest(trials / "row1" / "cleaned_manifest.parquet")
    source, _ = read_manifest(tiny_project["manifest"])
    # The judge set: held-out (test) pairs below the proxy's cut of their scene are left out of every trial.
    assert reports[1]["judge_left_out"] == reports[0]["judge_left_out"] > 0
    assert reports[0]["judge_left_out"] == (
        (source["split"] == "test").sum() - (cleaned["split"] == "test").sum())
    assert len({r["prompt_keys_sha256"] for r in reports[:3]}) == 1
    assert reports[1]["reference"]["all"]["CLIPScore-indomain"] > 0  # the real images' score, for the signal flag

    result = run_select(cfg, progress=False)
    sel = result.selection
    level = sel["objective"]["level"]
    assert sel["mode"] == "calibrate" and level in (0.0, 1.0, 2.0)
    assert sel["ratios"] == plan.rows[plan.levels.index(level)]
    for rec in sel["scenes"].values():
        assert rec["evidence"] == "scores+calibration(3 trials)" and rec["low"] <= rec["ratio"] <= rec["high"] + 1e-9
        assert isinstance(rec["no_model_signal"], bool) and isinstance(rec["low_confidence"], bool)
    assert sel["budget"].startswith(f"3 trials: level calibrated (λ*={level:g})")
    sizes = {s: c["cleanable"] for s, c in sel["counts"].items()}
    assert sel["global_ratio"] == pytest.approx(
        round(sum(sel["ratios"][s] * n for s, n in sizes.items()) / sum(sizes.values()), 4))
    text = (result.out / "results.md").read_text()
    assert "Trial budget: 3 trials" in text and "| beach |" in text

    attr = _mode_cfg(tiny_project, "attribute", **{"select.rows": list(range(8))})
    for row in range(8):
        run_plan_row(attr, row, Path(attr.select.trials) / f"row{row}", progress=False)
    chosen = run_select(attr, progress=False).selection
    assert chosen["mode"] == "attribute" and chosen["objective"]["residual_df"] == 3
    for rec in chosen["scenes"].values():
        assert rec["evidence"] == "scores+attribution(8 trials)"
        assert rec["se"] > 0 and 0.0 <= rec["p_positive"] <= 1.0 and 0.0 <= rec["ratio"] <= 0.9
        assert rec["low"] <= rec["ratio"] <= rec["high"]
    assert chosen["budget"] == "8 trials for 4 scenes: one effect per scene, 3 residual degrees of freedom"
    # Trials of another plan are not mixed in: change the plan and the old trials are refused.
    other = _mode_cfg(tiny_project, "attribute", **{"select.rows": list(range(8)), "select.attribute_level": 0.5})
    with pytest.raises(FileNotFoundError, match="8 trials there belong to another plan"):
        run_select(other, progress=False)
    # One row re-run with other fine-tune settings (same plan): the trials are never mixed into one decision.
    retuned = _mode_cfg(tiny_project, "attribute", **{"select.rows": list(range(8)), "finetune.rank": 4})
    run_plan_row(retuned, 1, Path(attr.select.trials) / "row1-rank4", progress=False)
    with pytest.raises(ValueError, match="two different trials of plan row 1"):
        run_select(attr, progress=False)
    shutil.rmtree(Path(attr.select.trials) / "row1")
    with pytest.raises(ValueError, match="were run with different settings"):
        run_select(attr, progress=False)


def test_select_trial_command_rows_and_idle_slots(tiny_project: dict[str, str], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dldc.cli import main

    (tmp_path / "params.yaml").write_text("profile: demo\n")
    base = ["--params", str(tmp_path / "params.yaml"), "-S", "tracking.enabled=false",
            "-S", f"select.scores={tiny_project['scores']}", "-S", f"select.manifest={tiny_project['manifest']}",
            "-S", "select.proxy_bootstrap=20", "-S", "select.calibrate_levels=[0.0, 1.0]"]
    neither = CliRunner().invoke(main, [*base, "select-trial"])
    assert neither.exit_code != 0 and "exactly one of --row" in neither.output
    spare = CliRunner().invoke(main, [*base, "select-trial", "--row", "5", "--out", str(tmp_path / "row5")])
    assert spare.exit_code == 0, spare.output
    assert "slot 5: idle (the calibrate plan has 2 trials; slot 5 is spare)" in spare.output
    proxy = CliRunner().invoke(main, [*base, "-S", "select.mode=proxy", "select-trial", "--row", "0",
                                      "--out", str(tmp_path / "row0")])
    assert proxy.exit_code == 0 and "proxy mode runs no trials" in proxy.output
    assert json.loads((tmp_path / "row0" / "trial.json").read_text())["idle"] is True
    short = CliRunner().invoke(main, [*base, "-S", "select.mode=attribute", "-S", "select.min_scene_pairs=4",
                                      "-S", f"select.trials={tmp_path}", "-S", f"select.out={tmp_path / 'out'}",
                                      "select"])
    assert short.exit_code != 0 and "the attribute plan has 8 trials but select.rows covers 6" in short.output
    proxy_select = CliRunner().invoke(main, [*base, "-S", "select.mode=proxy", "-S", f"select.out={tmp_path / 'p'}",
                                             "select"])
    assert proxy_select.exit_code == 0, proxy_select.output
    assert "no trials: per-scene ratios and their intervals from the scores alone" in proxy_select.output
    assert "| beach |" in (tmp_path / "p" / "results.md").read_text()
