"""The evaluation's result and its output folder: ``results.json``, ``evaluate.json``, the tables.

Output folder (written atomically by :func:`write_evaluation`)::

    results.json       protocol, extractors, scorers, arms, every metric row
    results.md         the same as tables: overall, change vs. base, per scene
    metrics.parquet    the metric rows (one per scene × arm × metric)
    per_image.parquet  prompt scores of every generated (and real reference) image
    bootstrap.parquet  scene, arm, metric, replicate, value (shared resamples across arms)
    evaluate.json      overall values and relative changes per arm (DVC metrics)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dldc.config import EvaluateConfig
from dldc.evaluate.bootstrap import paired_interval
from dldc.evaluate.metrics import ALL_SCENES
from dldc.evaluate.report import render_markdown
from dldc.io import atomic_dir, write_json, write_parquet

RESULTS_FILE = "results.json"
SUMMARY_FILE = "evaluate.json"
MARKDOWN_FILE = "results.md"
METRICS_FILE = "metrics.parquet"
PER_IMAGE_FILE = "per_image.parquet"
BOOTSTRAP_FILE = "bootstrap.parquet"


@dataclass
class EvaluationResult:
    """What :func:`~dldc.evaluate.evaluate.evaluate_generations` computed.

    Attributes:
        out: the output folder (``None`` when nothing was written).
        results: the ``results.json`` content.
        table: the metric rows (columns as in ``metrics.parquet``).
        replicates: ``{(scene, arm, metric): bootstrap values}``; the draws are shared across arms.
        per_image: prompt scores per generated / reference image.
    """

    out: Path | None
    results: dict[str, Any]
    table: pd.DataFrame
    replicates: dict[tuple[str, str, str], np.ndarray]
    per_image: pd.DataFrame

    def row(self, arm: str, metric: str, scene: str = ALL_SCENES) -> pd.Series:
        """The metric row of one arm and scene (``KeyError`` when it was not computed)."""
        rows = self.table[(self.table.arm == arm) & (self.table.metric == metric) & (self.table.scene == scene)]
        if rows.empty:
            raise KeyError(f"no {metric} for arm {arm!r}, scene {scene!r}; have {sorted(set(self.table.metric))}")
        return rows.iloc[0]

    def value(self, arm: str, metric: str, scene: str = ALL_SCENES) -> float:
        """The point value of one metric (``KeyError`` when it was not computed)."""
        return float(self.row(arm, metric, scene)["value"])

    def compare(self, arm: str, other: str, metric: str, scene: str = ALL_SCENES) -> dict[str, Any]:
        """``arm`` minus ``other`` on one metric, with the paired bootstrap interval.

        Returns:
            ``delta``, ``ci_low``, ``ci_high``, ``better`` (``arm`` is better than ``other`` and the
            interval excludes zero on the better side) and ``higher_is_better`` (the metric's direction).

        Example:
            >>> # result.compare("clean", "raw", "FD-indomain") -> {"delta": -1.2, "ci_high": -0.3, "better": True, ...}
        """
        mine = self.row(arm, metric, scene)
        delta = float(mine["value"]) - self.value(other, metric, scene)
        low, high = paired_interval(
            self.replicates.get((scene, arm, metric)),
            self.replicates.get((scene, other, metric)),
            self.results["protocol"]["ci"],
        )
        higher = bool(mine["higher_is_better"])
        better = (low > 0) if higher else (high < 0)
        return {
            "metric": metric,
            "scene": scene,
            "arm": arm,
            "other": other,
            "delta": delta,
            "ci_low": low,
            "ci_high": high,
            "higher_is_better": higher,
            "better": bool(better),
        }


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Metric rows as JSON-safe dicts (NaN → None)."""
    out = []
    for record in table.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for k, v in record.items()})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def arm_info(rows: pd.DataFrame) -> dict[str, Any]:
    """What one arm's generations were made with (``results.json``'s ``arms``)."""

    def single(column: str) -> Any:
        values = sorted({_plain(v) for v in rows[column]}, key=str)
        return values[0] if len(values) == 1 else values

    return {
        "n_generated": len(rows),
        "folder": single("folder"),
        "model": single("model"),
        "adapter": single("adapter"),
        "guidance_scale": single("guidance_scale"),
        "steps": single("steps"),
        "seeds": sorted({int(s) for s in rows["seed"]}),
    }


def protocol_warnings(gens: pd.DataFrame, arms: list[str]) -> list[str]:
    """Differences between arms that make their comparison less clean (recorded, not fatal)."""
    warnings = []
    keys = {arm: set(zip(gens.loc[gens.arm == arm, "pair_id"], gens.loc[gens.arm == arm, "seed"])) for arm in arms}
    first = arms[0]
    for arm in arms[1:]:
        if keys[arm] != keys[first]:
            warnings.append(
                f"arms {first!r} and {arm!r} cover different (pair_id, seed) keys "
                f"({len(keys[first] - keys[arm])} only in {first}, {len(keys[arm] - keys[first])} only in {arm}): "
                "the bootstrap is not fully paired"
            )
    for column in ("guidance_scale", "steps"):
        values = {arm: sorted(set(gens.loc[gens.arm == arm, column].tolist())) for arm in arms}
        if len({json.dumps(v) for v in values.values()}) > 1:
            warnings.append(f"arms differ in {column}: {values}")
    return warnings


def fingerprint(
    gens: pd.DataFrame,
    real: pd.DataFrame,
    extractor_ids: list[str],
    scorer_ids: list[str],
    cfg: EvaluateConfig,
    resolution: str,
) -> str:
    """sha256 of what makes two evaluations' numbers comparable (not the generated images)."""
    protocol = {
        "real": sorted(real["image_id"]),
        "keys": sorted(f"{p}|{s}|{t}" for p, s, t in zip(gens["pair_id"], gens["seed"], gens["prompt"])),
        "resolution": resolution,
        "real_resize": cfg.real_resize,
        "guidance_scale": sorted({float(v) for v in gens["guidance_scale"]}),
        "steps": sorted({int(v) for v in gens["steps"]}),
        "extractors": sorted(extractor_ids),
        "scorers": sorted(scorer_ids),
        "kid": [cfg.kid_subsets, cfg.kid_subset_size],
        "split": cfg.split,
    }
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def summary(result: EvaluationResult) -> dict[str, Any]:
    """The overall value and relative change vs. base of every metric per arm (``evaluate.json``)."""
    overall = result.table[result.table["scene"] == ALL_SCENES]
    values: dict[str, dict[str, float | None]] = {}
    changes: dict[str, dict[str, float | None]] = {}
    for arm, metric, value, change in zip(overall.arm, overall.metric, overall.value, overall.rel_change_pct):
        values.setdefault(arm, {})[metric] = None if math.isnan(value) else float(f"{value:.6g}")
        if arm != result.results["protocol"]["base_arm"]:
            changes.setdefault(arm, {})[metric] = None if math.isnan(change) else float(f"{change:.4g}")
    return {
        "arms": values,
        "relative_change_vs_base_pct": changes,
        "n_real": result.results["protocol"]["n_real"],
        "n_generated": {arm: info["n_generated"] for arm, info in result.results["arms"].items()},
        "fingerprint": result.results["protocol"]["fingerprint"],
    }


def write_evaluation(result: EvaluationResult, out: str | Path) -> Path:
    """Write every output file of an evaluation into ``out`` (atomically, as one folder)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / RESULTS_FILE, result.results)
        write_json(tmp / SUMMARY_FILE, summary(result))
        (tmp / MARKDOWN_FILE).write_text(render_markdown(result.results), encoding="utf-8")
        write_parquet(tmp / METRICS_FILE, pa.Table.from_pandas(result.table, preserve_index=False))
        write_parquet(tmp / PER_IMAGE_FILE, pa.Table.from_pandas(result.per_image, preserve_index=False))
        boot = [
            {"scene": scene, "arm": arm, "metric": metric, "replicate": i, "value": float(v)}
            for (scene, arm, metric), values in result.replicates.items()
            for i, v in enumerate(values)
        ]
        schema = pa.schema(
            [("scene", pa.string()), ("arm", pa.string()), ("metric", pa.string()), ("replicate", pa.int32()),
             ("value", pa.float64())]
        )  # fmt: skip
        write_parquet(tmp / BOOTSTRAP_FILE, pa.Table.from_pylist(boot, schema=schema))
    result.out = out
    return out


def read_replicates(folder: str | Path) -> dict[tuple[str, str, str], np.ndarray]:
    """The bootstrap replicates an evaluation wrote: ``{(scene, arm, metric): values}``, in replicate order.

    The draws are shared across arms, so two arms' arrays pair up. Empty when the evaluation ran
    without bootstrap (``evaluate.bootstrap: 0``) or the folder has no ``bootstrap.parquet``.
    """
    path = Path(folder) / BOOTSTRAP_FILE
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path).sort_values("replicate")
    return {
        (str(scene), str(arm), str(metric)): rows["value"].to_numpy(dtype=float)
        for (scene, arm, metric), rows in frame.groupby(["scene", "arm", "metric"], sort=False)
    }


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """Read ``results.json`` of an evaluation folder.

    Raises:
        FileNotFoundError: the folder has no ``results.json`` (run ``dldc evaluate``).
    """
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `dldc evaluate` first")
    return json.loads(path.read_text(encoding="utf-8"))
