"""The evaluation's Markdown report: overall table, change vs. base (paper framing), per scene.

Example:
    >>> format_value(12.345678), format_value(0.000123456), format_value(float("nan"))
    ('12.35', '0.0001235', '–')
    >>> format_change(-35.04, -40.2, -29.9)
    '−35.0% [−40.2, −29.9]'
"""

from __future__ import annotations

import math
from typing import Any

from dldc.evaluate.metrics import ALL_SCENES

DASH = "–"


def format_value(value: float | None) -> str:
    """Four significant digits (two decimals for values >= 1); a dash for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def format_change(pct: float | None, low: float | None, high: float | None) -> str:
    """``−35.0% [−40.2, −29.9]``: relative change with its paired interval (in % of the base)."""
    if pct is None or (isinstance(pct, float) and math.isnan(pct)):
        return DASH
    text = f"{_signed(pct)}%"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{_signed(low)}, {_signed(high)}]"
    return text


def _cell(row: dict[str, Any]) -> str:
    text = format_value(row.get("value"))
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" [{format_value(row['ci_low'])}, {format_value(row['ci_high'])}]"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report of a ``results.json`` dict (see :mod:`dldc.evaluate.evaluate`)."""
    protocol = results["protocol"]
    rows = results["metrics"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    arms = list(results["arms"])
    all_arms = arms + (["real"] if any(r["arm"] == "real" for r in rows) else [])
    index = {(r["scene"], r["arm"], r["metric"]): r for r in rows}
    level = round(protocol["ci"] * 100)
    lines = [
        "# Generation quality",
        "",
        f"Real images: {protocol['n_real']} ({protocol['split']} split of `{protocol['manifest']}`, sha256 "
        f"{protocol['manifest_sha256'][:12]}); resolution {protocol['resolution']}; {protocol['real_resize']}.",
        "Generated per arm: "
        + ", ".join(f"{arm} {info['n_generated']}" for arm, info in results["arms"].items())
        + f"; seeds paired across arms: {'yes' if protocol['paired'] else 'no'}.",
        f"Intervals: {level}% {protocol['ci_method']} ({protocol['bootstrap']} resamples). KID: "
        f"{protocol['kid']['estimator']}, kernel {protocol['kid']['kernel']}, {protocol['kid']['subsets']} subsets.",
        f"Protocol fingerprint: `{protocol['fingerprint']}`.",
        "",
    ]
    for name, info in results["extractors"].items():
        lines.append(
            f"- `{name}` / `{info['metrics'][1]}`: {info['kind']} `{info['extractor_id']}`, "
            f"{info['feature_dim']}-d features, input: {info['input']}"
            + (f"; {info['note']}" if info.get("note") else "")
        )
    for label, info in results["scorers"].items():
        lines.append(
            f"- `CLIPScore-{label}` (100·max(cos, 0)) and `cos-{label}` (raw cosine): `{info['scorer_id']}`"
            + (f"; {info['crossfit']}" if info.get("crossfit") else "")
            + f"; prompts over {info['context_length']} tokens: {info['prompts_truncated']}"
        )
    for warning in protocol.get("warnings", []):
        lines.append(f"- **warning**: {warning}")
    lines += ["", "## Overall", ""]
    lines += _table(
        ["arm", *metrics],
        [
            [arm] + [_cell(index[(ALL_SCENES, arm, m)]) if (ALL_SCENES, arm, m) in index else DASH for m in metrics]
            for arm in all_arms
        ],
    )
    lines += ["", f"## Change vs. `{protocol['base_arm']}` (lower is better for distances)", ""]
    lines += _table(
        ["arm", *metrics],
        [
            [arm]
            + [
                format_change(r.get("rel_change_pct"), r.get("rel_ci_low_pct"), r.get("rel_ci_high_pct"))
                if (r := index.get((ALL_SCENES, arm, m)))
                else DASH
                for m in metrics
            ]
            for arm in all_arms
            if arm != protocol["base_arm"]
        ],
    )
    scenes = sorted({r["scene"] for r in rows} - {ALL_SCENES})
    if scenes:
        lines += ["", "## Per scene", ""]
        for metric in metrics:
            lines += [f"### {metric}", ""]
            scene_rows = []
            for scene in scenes:
                first = next((index[(scene, a, metric)] for a in all_arms if (scene, a, metric) in index), None)
                n_real = str(first["n_real"]) if first else DASH
                cells = [format_value(index[(scene, a, metric)]["value"]) if (scene, a, metric) in index else DASH
                         for a in all_arms]  # fmt: skip
                scene_rows.append([scene, n_real, *cells])
            lines += _table(["scene", "N real", *all_arms], scene_rows)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
