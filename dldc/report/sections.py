"""The report's sections as HTML text: scenes, EGL before/after, ingest rejects, sample grids, metrics.

Every value that comes from the data (captions above all: user text) goes through :func:`esc`
before it reaches the page, so a caption such as ``<script>…`` is shown, never run. Each function
takes the checked inputs (:class:`dldc.report.inputs.ReportInputs`) and the thumbnail writer and
returns one ``<section>``; the numbers they also return feed the stage's ``metrics.json``.

Example:
    >>> esc('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    >>> scene_anchor("bare land / desert")
    'scene-bare-land-desert-8cb0'
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from typing import Any

import pandas as pd

from dldc.config import ReportConfig
from dldc.report.graphics import Thumbnails, curve_svg, histogram_svg
from dldc.report.inputs import ReportInputs

DASH = "–"


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def scene_anchor(scene: str) -> str:
    """A stable, HTML-safe id for a scene's section (a slug plus a short hash: distinct scenes, distinct ids)."""
    slug = re.sub(r"[^a-z0-9]+", "-", scene.lower()).strip("-") or "scene"
    return f"scene-{slug}-{hashlib.sha256(scene.encode()).hexdigest()[:4]}"


def number(value: Any, digits: int = 3) -> str:
    """A short number for a table cell; a dash for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}g}"


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(src: str | None, alt: str) -> str:
    if src is None:
        return f'<div class="noimg" title="{esc(alt)}">no preview</div>'
    return f'<img src="{esc(src)}" alt="{esc(alt)}" loading="eager">'


def card(src: str | None, caption: str, facts: str, cls: str = "") -> str:
    """One thumbnail with its caption (escaped here) and a line of facts (already escaped)."""
    return (f'<figure class="card {cls}">{_img(src, caption)}<figcaption><span class="cap">{esc(caption)}</span>'
            f'<span class="facts">{facts}</span></figcaption></figure>')  # fmt: skip


# ---------------------------------------------------------------- selection: the scenes


def ratio_interval(selection: dict[str, Any], scene: str) -> tuple[float, float] | None:
    """The scene's 80% interval of ``r*`` (``selection.json``'s ``scenes``), else ``None``.

    Selections written before the per-scene records (loop mode): the ratios whose ``J`` is within one
    paired bootstrap SE of the scene's best (``objective.paired_se``).

    Example:
        >>> ratio_interval({"scenes": {"a": {"ratio": 0.2, "low": 0.1, "high": 0.3}}}, "a")
        (0.1, 0.3)
        >>> sel = {"curves": {"a": {"0": 0.0, "0.1": 0.9, "0.2": 1.0}},
        ...        "objective": {"paired_se": {"a": {"0": 0.1, "0.1": 0.2, "0.2": 0.0}}}}
        >>> ratio_interval(sel, "a")
        (0.1, 0.2)
    """
    record = (selection.get("scenes") or {}).get(scene) or {}
    if record.get("low") is not None and record.get("high") is not None:
        return (float(record["low"]), float(record["high"]))
    curve = selection.get("curves", {}).get(scene) or {}
    errors = (selection.get("objective", {}).get("paired_se") or {}).get(scene)
    values = {float(r): v for r, v in curve.items() if v is not None}
    if not errors or not values:
        return None
    best = max(values.values())
    inside = [r for r, v in values.items() if v >= best - float(errors.get(f"{r:g}") or 0.0) - 1e-12]
    return (min(inside), max(inside))


def histogram_column(frame: pd.DataFrame, wanted: str | None) -> str:
    """The score the histograms show: ``wanted``, else the first scorer's cosine, else ``fused``.

    Raises:
        ValueError: ``wanted`` is not a column of the scores.
    """
    if wanted is not None:
        if wanted not in frame.columns:
            raise ValueError(f"report.score_column {wanted!r} is not a column of the scores; "
                             f"scorers: {scorer_names(frame)}")  # fmt: skip
        return wanted
    names = scorer_names(frame)
    return names[0] if names else "fused"


def scorer_names(frame: pd.DataFrame) -> list[str]:
    """Scorer cosine columns: every ``<name>`` with a ``<name>_clipscore`` beside it (the scores' contract)."""
    return [c.removesuffix("_clipscore") for c in frame.columns
            if c.endswith("_clipscore") and c.removesuffix("_clipscore") in frame.columns]  # fmt: skip


def _pair_facts(row: Any, column: str) -> str:
    source = "" if row.caption_source == "original" else f" · {esc(row.caption_source)}"
    return (f"rank {int(row.rank) + 1}/{int(row.scene_size)} · fused {number(row.fused)} · "
            f"{esc(column)} {number(getattr(row, column, None))}{source}")  # fmt: skip


def _cards(rows: pd.DataFrame, inputs: ReportInputs, thumbs: Thumbnails, column: str, cls: str) -> list[str]:
    return [card(thumbs(inputs.root, row.image), row.caption, _pair_facts(row, column), cls)
            for row in rows.itertuples()]  # fmt: skip


def scene_overview(inputs: ReportInputs) -> str:
    """The table of every scene's ratio, its interval, counts and the reason (or fallback)."""
    sel = inputs.selection
    counts = sel.get("counts", {})
    rows = []
    for scene in sorted(sel["ratios"]):
        interval = ratio_interval(sel, scene)
        c = counts.get(scene, {})
        record = (sel.get("scenes") or {}).get(scene) or {}
        reason = sel.get("fallbacks", {}).get(scene) or sel.get("reasons", {}).get(scene, "")
        flags = [name for key, name in (("low_confidence", "low confidence"), ("no_model_signal", "no model signal"))
                 if record.get(key)]
        rows.append([
            f'<a href="#{scene_anchor(scene)}">{esc(scene)}</a>', number(sel["ratios"][scene]),
            f"{interval[0]:.2f}–{interval[1]:.2f}" if interval else DASH, esc(record.get("evidence", sel["mode"])),
            esc(f"{record['effect']:+.3g} ± {record['se']:.2g} (P>0 {record['p_positive']:.2f})")
            if record.get("effect") is not None else DASH,
            esc(", ".join(flags)) or DASH, esc(c.get("cleanable", DASH)), esc(c.get("kept", DASH)),
            esc(c.get("dropped", DASH)), ("fallback: " if scene in sel.get("fallbacks", {}) else "") + esc(reason),
        ])  # fmt: skip
    objective = sel.get("objective", {})
    budget = f" Trial budget: {esc(sel['budget'])}." if sel.get("budget") else ""
    return (
        f'<section id="selection"><h2>Cleaning ratio per scene</h2>'
        f"<p>Mode <b>{esc(sel['mode'])}</b> ({esc(objective.get('definition', ''))}); global ratio "
        f"{number(sel['global_ratio'])}; grid {esc(', '.join(f'{r:g}' for r in sel.get('grid', [])))}; cleaned "
        f"splits {esc(', '.join(sel['splits']))}. Interval: 80% for r* (proxy: a bootstrap over the scene's "
        f"pairs; calibrate: that interval times the level; attribute: the precision-weighted combination).{budget}"
        "</p>"
        + table(["scene", "r*", "interval", "evidence", "effect ± SE", "flags", "cleanable", "kept", "dropped",
                 "why"], rows, "wide")
        + "</section>"
    )


def scene_section(scene: str, rows: pd.DataFrame, inputs: ReportInputs, thumbs: Thumbnails, cfg: ReportConfig,
                  column: str) -> str:  # fmt: skip
    """One scene: its ratio and evidence, the histogram with the cut, and the galleries either side of it."""
    sel = inputs.selection
    ordered = rows.sort_values("rank")
    dropped, kept = ordered[ordered["dropped"]], ordered[~ordered["dropped"]]
    cut = None
    if len(dropped) and len(kept):  # between the last dropped and first kept pair by rank, on this score
        cut = (float(dropped[column].iloc[-1]) + float(kept[column].iloc[0])) / 2
    interval = ratio_interval(sel, scene)
    where = ("fell back to the global ratio: " + sel["fallbacks"][scene]) if scene in sel.get("fallbacks", {}) \
        else sel.get("reasons", {}).get(scene, "")
    ratio = sel["ratios"].get(scene)
    head = (
        f'<section class="scene" id="{scene_anchor(scene)}" data-scene="{esc(scene)}"><h3>{esc(scene)}</h3>'
        f'<p class="facts">r* = <b>{number(ratio)}</b>'
        + (f" (80% interval {interval[0]:.2f}–{interval[1]:.2f})" if interval else "")
        + f"; evidence: {esc(sel['mode'])} mode — {esc(where)}; {len(kept)} kept, {len(dropped)} dropped of "
        f"{len(ordered)} cleanable pairs.</p>"
        '<div class="plots">'
        + histogram_svg(kept[column].tolist(), dropped[column].tolist(), cfg.histogram_bins, cut, column)
        + f"{curve_svg(sel.get('curves', {}).get(scene) or {}, ratio)}</div>"
    )  # fmt: skip
    galleries = []
    lowest = dropped.head(cfg.lowest_dropped)
    if len(lowest):
        galleries.append(("Lowest-scoring dropped", _cards(lowest, inputs, thumbs, column, "dropped")))
    if cfg.around_cut:
        below = dropped.iloc[max(len(dropped) - cfg.around_cut, len(lowest)):]
        above = kept.head(cfg.around_cut)
        around = _cards(below, inputs, thumbs, column, "dropped") + ['<div class="cutmark">cut</div>'] \
            + _cards(above, inputs, thumbs, column, "kept")
        galleries.append(("Either side of the cut", around))
    best = kept.iloc[max(len(kept) - cfg.best_kept, min(cfg.around_cut, len(kept))):].iloc[::-1]
    if len(best):
        galleries.append(("Best kept", _cards(best, inputs, thumbs, column, "kept")))
    body = "".join(f'<h4>{title}</h4><div class="gallery">{"".join(cards)}</div>' for title, cards in galleries)
    return head + body + "</section>"


# ---------------------------------------------------------------- EGL before / after


def _layout_verdict(value: Any, checked: bool) -> str:
    if not checked:
        return "no layout check"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "names no place"
    return "layout holds" if float(value) >= 1.0 else f"contradicted ({float(value):.0%} of places hold)"


def egl_section(inputs: ReportInputs, thumbs: Thumbnails, cfg: ReportConfig) -> tuple[str, int]:
    """Repaired captions per scene, before and after, with fused scores and layout verdicts; and how many."""
    lineage = inputs.captions
    if lineage is None:
        return "", 0
    checked = "layout" in lineage.columns
    originals = lineage[lineage["status"] == "original"].drop_duplicates("pair_id").set_index("pair_id")
    final = lineage[lineage["selected"].astype(bool) & (lineage["round"] > 0)].drop_duplicates("pair_id")
    final = final[final["pair_id"].isin(originals.index)].copy()
    final["gain"] = final["fused"].astype(float) - originals.loc[final["pair_id"], "fused"].astype(float).to_numpy()
    images = inputs.ranked.set_index("pair_id")["image"]
    report = inputs.caption_report or {}
    parts = [
        '<section id="egl"><h2>EGL: repaired captions</h2>',
        f"<p>{len(final)} captions replaced"
        + (f" of {esc(report.get('low_at_start'))} below their scene threshold at the start; stopped: "
           f"{esc(report.get('stop'))}" if report else "")
        + ". Scores are fused IEL scores on the round-0 scale; the layout check compares a caption's places "
        "with the image's mask.</p>",
    ]  # fmt: skip
    for scene, rows in final.sort_values(["scene", "gain", "pair_id"], ascending=[True, False, True]).groupby("scene"):
        items = []
        for row in rows.head(cfg.egl_examples).itertuples():
            before = originals.loc[row.pair_id]
            src = thumbs(inputs.root, images[row.pair_id]) if row.pair_id in images.index else None
            after_layout = getattr(row, "layout", None)
            items.append([
                _img(src, row.caption),
                f'<span class="cap">{esc(before["caption"])}</span><br><span class="facts">fused '
                f'{number(before["fused"])} · {esc(_layout_verdict(before.get("layout"), checked))}</span>',
                f'<span class="cap">{esc(row.caption)}</span><br><span class="facts">fused {number(row.fused)} · '
                f"{esc(_layout_verdict(after_layout, checked))} · {esc(row.backend)}:{esc(row.model)}, round "
                f"{int(row.round)}</span>",
            ])  # fmt: skip
        parts.append(f"<h3>{esc(scene)} ({len(rows)} replaced)</h3>"
                     + table(["image", "before", "after"], items, "egl"))  # fmt: skip
    parts.append("</section>")
    return "".join(parts), len(final)


# ---------------------------------------------------------------- ingest rejects


def ingest_section(inputs: ReportInputs, thumbs: Thumbnails, cfg: ReportConfig) -> tuple[str, int]:
    """Rejected pairs by reason (pairs and images), with examples; and how many pairs were rejected."""
    rejects = inputs.rejects
    if rejects is None:
        return "", 0
    counts = (inputs.ingest_report or {}).get("counts", {})
    by_images = counts.get("rejected_images_by_reason", {})
    parts = ['<section id="ingest"><h2>Ingest: rejected pairs</h2>']
    if counts:
        parts.append(f"<p>{esc(counts.get('kept_pairs'))} of {esc(counts.get('input_pairs'))} pairs kept "
                     f"({esc(counts.get('kept_images'))} images); {len(rejects)} rejected.</p>")  # fmt: skip
    if rejects.empty:
        parts.append("<p>No pair was rejected.</p></section>")
        return "".join(parts), 0
    summary = rejects["reason"].value_counts().sort_index()
    parts.append(table(["reason", "pairs", "images"],
                       [[esc(r), str(int(n)), esc(by_images.get(r, DASH))] for r, n in summary.items()]))  # fmt: skip
    for reason, rows in rejects.sort_values("pair_id").groupby("reason"):
        cards = []
        for row in rows.head(cfg.reject_examples).itertuples():
            src = thumbs(inputs.root, row.image) if row.image else None
            cards.append(card(src, row.caption or "", f"{esc(row.image)} · {esc(row.detail)}", "reject"))
        parts.append(f'<h4>{esc(reason)}</h4><div class="gallery">{"".join(cards)}</div>')
    parts.append("</section>")
    return "".join(parts), len(rejects)


# ---------------------------------------------------------------- generations: sample grids


def sample_prompts(gens: pd.DataFrame, count: int) -> list[tuple[str, int]]:
    """``count`` (pair_id, seed) keys that every arm has, spread over the scenes, in a fixed order.

    Example:
        >>> g = pd.DataFrame({"pair_id": ["a", "a", "b", "b", "c"], "seed": 0, "arm": ["x", "y", "x", "y", "x"],
        ...                   "scene": ["s", "s", "t", "t", "t"]})
        >>> sample_prompts(g, 5)
        [('a', 0), ('b', 0)]
    """
    arms = gens["arm"].unique()
    keyed = gens.assign(key=list(zip(gens["pair_id"], gens["seed"].astype(int))))
    shared = set.intersection(*(set(keyed.loc[keyed["arm"] == arm, "key"]) for arm in arms))
    # Distinct prompts before a second seed of one, taking the scenes in turn.
    firsts = keyed[keyed["key"].isin(shared)].drop_duplicates("key").sort_values(["seed", "pair_id"])
    firsts = firsts.assign(turn=firsts.groupby("scene").cumcount()).sort_values(["turn", "scene", "pair_id", "seed"])
    return [tuple(k) for k in firsts["key"].head(count)]


def generations_section(inputs: ReportInputs, thumbs: Thumbnails, cfg: ReportConfig) -> tuple[str, int]:
    """One row per prompt: the real image, then each arm's image for the same prompt and seed."""
    gens, folder = inputs.generations, inputs.generations_dir
    if gens is None or folder is None or not cfg.generation_prompts:
        return "", 0
    keys = sample_prompts(gens, cfg.generation_prompts)
    arms = sorted(gens["arm"].unique(), key=lambda a: (a != "base", a))
    index = gens.set_index(["pair_id", "seed", "arm"]).sort_index()
    images = inputs.ranked.set_index("image_id")["image"].to_dict()
    rows = []
    for pair_id, seed in keys:
        first = index.loc[(pair_id, seed)].iloc[0]
        real = images.get(first["image_id"])
        cells = [f'<span class="cap">{esc(first["prompt"])}</span><br><span class="facts">{esc(first["scene"])} · '
                 f"seed {seed}</span>", _img(thumbs(inputs.root, real) if real else None, "real image")]  # fmt: skip
        for arm in arms:
            path = index.loc[(pair_id, seed, arm), "path"] if (pair_id, seed, arm) in index.index else None
            cells.append(_img(thumbs(folder, str(path)) if path is not None else None, f"{arm}: {first['prompt']}"))
        rows.append(cells)
    section = (
        '<section id="generations"><h2>Sample grids per fine-tune arm</h2>'
        f"<p>The same {len(keys)} prompts and seeds for every arm (rows), beside the real image the prompt "
        "describes.</p>" + table(["prompt", "real", *(esc(a) for a in arms)], rows, "grid") + "</section>"
    )
    return section, len(keys)


# ---------------------------------------------------------------- evaluation: metric tables


def _cell(row: dict[str, Any]) -> str:
    text = number(row.get("value"), 4)
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f' <span class="ci">[{number(row["ci_low"], 4)}, {number(row["ci_high"], 4)}]</span>'
    return text


def _protocol(row: dict[str, Any], extractors: dict[str, Any]) -> str:
    space = row.get("extractor") or DASH
    dim = row.get("feature_dim")
    for info in extractors.values():
        if info.get("extractor_id") == row.get("extractor"):
            space = f"{info.get('kind', '')} {info.get('extractor_id')}"
    return (f"N real {esc(row.get('n_real'))}, N gen {esc(row.get('n_generated'))}; {esc(space)}"
            + (f", {int(dim)}-d" if dim else "") + f"; {esc(row.get('resolution'))}")  # fmt: skip


def metrics_table(rows: list[dict[str, Any]], arms: list[str], extractors: dict[str, Any]) -> str:
    """Metric × arm, each value with its interval, and each metric's protocol (N, feature space, resolution)."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    index = {(r["arm"], r["metric"]): r for r in rows}
    body = []
    for metric in metrics:
        first = next(r for r in rows if r["metric"] == metric)
        arrow = "↑" if first.get("higher_is_better") else "↓"
        body.append([f"{esc(metric)} {arrow}", *(_cell(index[(a, metric)]) if (a, metric) in index else DASH
                                                  for a in arms), _protocol(first, extractors)])  # fmt: skip
    return table(["metric", *(esc(a) for a in arms), "protocol"], body, "metrics")


def evaluation_section(inputs: ReportInputs) -> tuple[str, int]:
    """The overall metric table and one per scene (folded), with the run's protocol; and the metric rows shown."""
    results = inputs.evaluation
    if results is None:
        return "", 0
    protocol = results["protocol"]
    rows = results["metrics"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    extractors = results.get("extractors", {})
    overall = [r for r in rows if r.get("scene") == "all"]
    level = round(float(protocol.get("ci", 0.95)) * 100)
    warnings = "".join(f"<li>{esc(w)}</li>" for w in protocol.get("warnings", []))
    resize = f" ({esc(protocol['real_resize'])})" if protocol.get("real_resize") else ""
    parts = [
        '<section id="evaluation"><h2>Generation metrics</h2>',
        f"<p>{esc(protocol.get('n_real'))} real {esc(protocol.get('split'))} images at "
        f"{esc(protocol.get('resolution'))}{resize}; intervals: {level}% {esc(protocol.get('ci_method'))}, "
        f"{esc(protocol.get('bootstrap'))} resamples; protocol fingerprint <code>{esc(protocol.get('fingerprint'))}"
        "</code>.</p>",
        f'<ul class="warn">{warnings}</ul>' if warnings else "",
        "<h3>All scenes</h3>" + metrics_table(overall, arms, extractors),
    ]  # fmt: skip
    scenes = sorted({r["scene"] for r in rows} - {"all"})
    for scene in scenes:
        parts.append(f"<details><summary>{esc(scene)}</summary>"
                     + metrics_table([r for r in rows if r["scene"] == scene], arms, extractors) + "</details>")
    parts.append("</section>")
    return "".join(parts), len(overall)
