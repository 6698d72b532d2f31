"""The dual loop: regenerate captions of low-scoring pairs, judge them with the IEL, keep the best.

How a run goes (:func:`caption_manifest`):

0. **Round 0** scores the original captions: ``caption.scores`` (``dldc score``'s output) when
   its ``score.json`` names the same scorers and it covers the manifest, else the IEL scores the
   manifest here (the embedding store spares what ``dldc score`` already encoded). A pair is
   *low* while its fused score is below its scene's threshold: the ``caption.threshold``
   within-scene percentile of the round-0 fused scores (``threshold_by_scene`` overrides).
1. **Round r = 1..K** asks every captioner (``caption.backends``) for a new caption of each low
   pair, with feedback: round r uses the r-th prompt (cycling), greedy decoding in round 1 and
   sampling at ``caption.temperature`` with seed ``seed + r`` afterwards, and every text already
   tried for the pair or in use by its image is to be avoided. Outputs are cleaned and cut to
   the token budget at a sentence boundary (:mod:`dldc.egl.prompts`).
2. The candidates are scored by the IEL engine (:func:`dldc.iel.engine.score_manifest`) with
   the same scorers — a cross-fitted scorer scores a candidate for an image with the fold model
   that never saw the image, unless that model trained on the candidate's text (a retrieval
   candidate is another image's caption): then with one that did not
   (:func:`dldc.iel.engine.pair_folds`) — and put on the round-0 scale of their scene
   (:class:`ReferenceFusion`), so a candidate and the caption it may replace are comparable.
3. Per pair, the best candidate replaces the current caption if it scores higher by more than
   ``caption.min_gain`` (two pairs of one image never get the same text). The loop stops after
   K rounds, when no pair is low, or when a round improves no pair.

With masks (``caption.layout_check``: their class table), every caption's places are checked
against its image's mask (:mod:`dldc.egl.layout_check`, column ``layout``: the share of its claims
that hold). A caption the mask contradicts (``layout < 1``) is low whatever its fused score; a
candidate the mask contradicts never replaces a caption it does not contradict, and one it does
not contradict replaces a contradicted caption whatever the scores.

Resumable like the IEL: each round's generations are written per shard of ``shard_size`` pairs
and captioner (``rounds/round-<r>/gen/b<j>-<i>.parquet``, keyed by everything they depend on,
with its sha256 beside it: a damaged shard is generated again, never trusted) and candidate
scoring is the engine's own sharded, cached run (``rounds/round-<r>/iel/``); a re-run reuses
every finished shard and, since the decisions are deterministic, ends with the same result as an
uninterrupted run. ``caption.out`` is locked while a run writes it (:func:`dldc.io.output_lock`).

Outputs in ``caption.out``:

``manifest.parquet``
    The input manifest (:data:`dldc.data.manifest.MANIFEST_SCHEMA`, same ``pair_id``s) with the
    kept caption of each pair; ``caption_source`` is ``original`` or ``egl:<backend>:<model>``
    (e.g. ``egl:mask2text:synthrs``, ``egl:hf:Qwen/Qwen2.5-VL-7B-Instruct``). The metadata's root
    points at the same dataset; ``extra.caption`` records the run.
``captions.parquet``
    Every caption considered, with its lineage: ``candidate_id`` (``<pair_id>@r<round>.<j>``,
    ``j`` the captioner's position; ``<pair_id>@r0`` for the original), ``pair_id``,
    ``image_id``, ``scene``, ``round``, ``backend`` (``original``, ``hf``, ``mask2text``,
    ``retrieval``), ``model``, ``prompt_id``, ``temperature``, ``seed``, ``raw`` (the
    captioner's text), ``caption`` (cleaned and fitted), ``status`` (``original``, ``scored``,
    ``none``: the captioner had none, ``empty``: nothing left after cleaning, ``duplicate``:
    already tried or in use on the image), ``detail``, ``tokens``, ``cut`` (shortened to the
    budget), the IEL signal columns (per scorer cosine, and ``<name>_scenefit`` where the
    scorer has a scene head), ``fused`` (round-0 scale), ``layout`` (with ``layout_check``: the
    share of the caption's places the mask confirms, ``NaN`` when it names none), ``accepted``
    (became the pair's caption in its round) and ``selected`` (is the pair's final caption).
``scores.parquet``, ``score.json``
    The IEL scores of the output manifest (the schema of ``dldc score``; fused within the new
    population), ready for ratio selection.
``caption.json``
    Thresholds per scene, per-round counts and mean fused score (round-0 scale), the stop
    reason, replacements per backend, pairs still low (drop candidates), timings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dldc.config import CaptionConfig, ScoreConfig
from dldc.data.manifest import ManifestMeta, dataset_root, read_manifest, write_manifest
from dldc.egl.base import Attempt, Captioner, CaptionRequest
from dldc.egl.factory import CaptionerContext, create_captioner
from dldc.egl.layout_check import LayoutChecker
from dldc.egl.prompts import clean_output, clip_token_counter, fit_to_budget, select_prompt
from dldc.egl.retrieval import normalise_text
from dldc.iel.base import CrossFitScorer, Scorer
from dldc.io import checksum_ok, output_lock, remove_stale_temps, write_json, write_parquet, write_parquet_checked

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
CAPTIONS_FILE = "captions.parquet"
SCORES_FILE = "scores.parquet"
REPORT_FILE = "caption.json"
ROUNDS_DIR = "rounds"
ORIGINAL = "original"
SCENEFIT_SUFFIX = "_scenefit"  # the IEL's caption–scene signal column (fused like a scorer)
LAYOUT = "layout"  # share of a caption's places its mask confirms (caption.layout_check)
_GEN_KEY = b"dldc.gen_key"
_GEN_SCHEMA = pa.schema([("pair_id", pa.string()), ("raw", pa.string()), ("detail", pa.string())])


@dataclass
class CaptionResult:
    """What :func:`caption_manifest` wrote."""

    manifest: Path
    captions: Path
    scores: Path
    report_path: Path
    report: dict[str, Any]
    frame: pd.DataFrame


class ReferenceFusion:
    """Fused scores of any caption on the round-0 scale of its scene.

    The IEL fuses scorers per scene (:mod:`dldc.iel.fuse`): ``rank`` averages within-scene
    percentile ranks, ``zscore`` within-scene z-scores. A candidate is placed in the *round-0*
    distribution of its scene — the percentile of its cosine among the original captions'
    cosines, or its z-score against their mean and std — so candidates of different rounds and
    the captions they compete with share one scale; for the original captions this equals the
    IEL's own ``fused``. A NaN signal (e.g. an unknown scene) is left out of the mean.

    Example:
        >>> ref = ReferenceFusion(pd.DataFrame({"scene": ["a"] * 4, "x": [0.1, 0.2, 0.3, 0.4]}), ["x"])
        >>> ref(pd.DataFrame({"scene": ["a", "a"], "x": [0.2, 0.35]})).round(3).tolist()
        [0.375, 0.75]
    """

    def __init__(self, round0: pd.DataFrame, columns: Sequence[str], method: str = "rank"):
        if method not in ("rank", "zscore"):
            raise ValueError(f"fusion method must be 'rank' or 'zscore', got {method!r}")
        self.columns, self.method = list(columns), method
        self.reference: dict[tuple[str, str], np.ndarray] = {}
        for scene, group in round0.groupby("scene", sort=True):
            for column in self.columns:
                values = group[column].to_numpy(dtype=np.float64)
                self.reference[(str(scene), column)] = np.sort(values[~np.isnan(values)])

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        """Fused score of each row of ``frame`` (``scene`` and the signal columns)."""
        normalised = np.full((len(self.columns), len(frame)), np.nan)
        for scene, positions in frame.groupby("scene", sort=False).indices.items():
            for row, column in enumerate(self.columns):
                reference = self.reference.get((str(scene), column))
                if reference is None or reference.size == 0:
                    continue
                values = frame[column].to_numpy(dtype=np.float64)[positions]
                if self.method == "rank":
                    below = np.searchsorted(reference, values, side="left")
                    at_most = np.searchsorted(reference, values, side="right")
                    scaled = (below + 0.5 * (at_most - below)) / reference.size
                else:
                    std = reference.std()
                    scaled = (values - reference.mean()) / std if std > 0 else np.zeros_like(values)
                scaled[np.isnan(values)] = np.nan
                normalised[row, positions] = scaled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: the pair stays NaN
            return np.nanmean(normalised, axis=0)


def signal_columns(scores: pd.DataFrame, scorer_names: Sequence[str]) -> list[str]:
    """The IEL columns fused into ``fused``: each scorer's cosine and, if present, its scene fit."""
    return [*scorer_names, *(f"{n}{SCENEFIT_SUFFIX}" for n in scorer_names if f"{n}{SCENEFIT_SUFFIX}" in scores)]


def scene_thresholds(
    fused: pd.Series, scenes: pd.Series, threshold: float, by_scene: dict[str, float]
) -> dict[str, float]:
    """Per scene, the fused score below which a pair is low: the ``threshold`` quantile of the scene.

    Example:
        >>> scene_thresholds(pd.Series([0.1, 0.2, 0.3, 0.4, 0.9]), pd.Series(["a"] * 4 + ["b"]), 0.5, {"b": 0.0})
        {'a': 0.25, 'b': 0.9}
    """
    out = {}
    for scene, values in fused.groupby(scenes, sort=True):
        values = values.dropna().to_numpy()
        quantile = by_scene.get(str(scene), threshold)
        out[str(scene)] = float(np.quantile(values, quantile)) if values.size else float("nan")
    return out


def token_budget(scorers: Sequence[Scorer | CrossFitScorer], budget: int) -> tuple[Callable[[str], int], int]:
    """The strictest token count over the scorers' tokenizers, and the budget they all allow."""
    models = [s.fold_model(0) if isinstance(s, CrossFitScorer) and not isinstance(s, Scorer) else s for s in scorers]
    models = [m for m in models if hasattr(m, "token_counts")]
    if not models:
        return clip_token_counter(), budget

    @functools.lru_cache(maxsize=1 << 16)
    def count(text: str) -> int:
        return max(model.token_counts([text])[0] for model in models)

    return count, min([budget, *(int(m.context_length) for m in models)])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(captioner: Captioner) -> str:
    return str(getattr(captioner, "fingerprint", None) or f"{captioner.backend}:{captioner.model_id}")


def _store_root(cfg: CaptionConfig, score_cfg: ScoreConfig) -> Path:
    if cfg.cache:
        return Path(cfg.cache)
    if score_cfg.cache:
        return Path(score_cfg.cache)
    return Path(score_cfg.out) / "embeddings"


def caption_manifest(
    cfg: CaptionConfig,
    score_cfg: ScoreConfig,
    *,
    scorers: Sequence[Scorer | CrossFitScorer] | None = None,
    captioners: Sequence[Captioner] | None = None,
    progress: bool = True,
) -> CaptionResult:
    """Run the EGL–IEL loop on ``cfg.manifest`` (see the module docstring).

    Args:
        cfg: the ``caption`` section.
        score_cfg: the ``score`` section (scorers when ``cfg.scorers`` is unset, fusion, batch
            sizes, embedding store).
        scorers: already-loaded IEL scorers (``None`` loads ``cfg.scorers or score_cfg.scorers``).
        captioners: already-built captioners (``None`` builds ``cfg.backends``).
        progress: show progress bars.

    Returns:
        The written paths, the report and the output manifest frame.

    Raises:
        FileNotFoundError: missing manifest.
        ValueError: an empty manifest or duplicate pair ids; bad specs (from the factories).
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _caption_manifest(cfg, score_cfg, scorers, captioners, progress)


def _caption_manifest(
    cfg: CaptionConfig,
    score_cfg: ScoreConfig,
    scorers: Sequence[Scorer | CrossFitScorer] | None,
    captioners: Sequence[Captioner] | None,
    progress: bool,
) -> CaptionResult:
    started = time.perf_counter()
    if not Path(cfg.manifest).is_file():
        raise FileNotFoundError(f"manifest {cfg.manifest} not found; run `dldc ingest` first")
    frame, meta = read_manifest(cfg.manifest)
    if frame.empty:
        raise ValueError(f"{cfg.manifest} has no pairs to caption")
    if not frame["pair_id"].is_unique:
        raise ValueError(f"{cfg.manifest} repeats pair ids; write it with dldc.data.manifest.write_manifest")
    frame = frame.reset_index(drop=True)
    root = dataset_root(cfg.manifest, meta)
    out = Path(cfg.out)
    remove_stale_temps(out)  # what killed runs left
    specs = list(cfg.scorers or score_cfg.scorers)
    if scorers is None:
        from dldc.iel.factory import create_scorer

        scorers = [
            create_scorer(
                spec,
                device=score_cfg.device,
                precision=score_cfg.precision,
                trust_remote_code=score_cfg.trust_remote_code,
            )
            for spec in specs
        ]
    store_root = _store_root(cfg, score_cfg)
    iel = score_cfg.model_copy(update={"scorers": specs, "cache": str(store_root)})

    # ---- round 0: the original captions
    round0, round0_source = _round0_scores(cfg, iel, frame, scorers, out, progress)
    names = [s.name for s in scorers]
    columns = signal_columns(round0, names)
    reference = ReferenceFusion(round0, columns, iel.fusion)
    state = frame[["pair_id", "image_id", "scene", "caption"]].merge(
        round0[["pair_id", *columns]], on="pair_id", how="left", validate="one_to_one"
    )
    state["fused"] = reference(state)
    checker = None
    if cfg.layout_check:
        checker = LayoutChecker(cfg.layout_check, root, cfg.mask_from, cfg.mask_to, cfg.mask_suffix,
                                cfg.layout_min_share)
        state[LAYOUT] = checker(list(frame["image"]), list(state["caption"]))
    thresholds = scene_thresholds(state["fused"], state["scene"], cfg.threshold, cfg.threshold_by_scene)
    state = state.assign(candidate_id=state["pair_id"] + "@r0", backend=ORIGINAL, model="", round=0, source=ORIGINAL)
    low_at_start = is_low(state, thresholds)
    lineage = [
        state.assign(
            prompt_id="", temperature=0.0, seed=0, raw=state["caption"], status=ORIGINAL, detail="",
            tokens=-1, cut=False, accepted=True,
        )
    ]  # fmt: skip
    count_tokens, budget = token_budget(scorers, cfg.token_budget)
    lineage[0]["tokens"] = [count_tokens(text) for text in state["caption"]]

    if captioners is None:
        pool = frame.merge(state[["pair_id", "fused"]], on="pair_id")[~low_at_start.to_numpy()]
        context = CaptionerContext(root, pool, scorers, store_root, score_batch_size=iel.batch_size)
        captioners = [create_captioner(spec, cfg, context) for spec in cfg.backends]

    tried = {pid: {normalise_text(text)} for pid, text in zip(state["pair_id"], state["caption"])}
    rounds = [_round_summary(0, state, thresholds, targets=int(low_at_start.sum()))]
    stop = f"ran all {cfg.rounds} rounds"
    for round_index in range(1, cfg.rounds + 1):
        low = is_low(state, thresholds)
        if not low.any():
            stop = "no pair below its scene threshold"
            break
        attempt = Attempt(
            round_index,
            select_prompt(cfg.prompts, round_index),
            0.0 if round_index == 1 else cfg.temperature,
            cfg.seed + round_index,
        )
        round_dir = out / ROUNDS_DIR / f"round-{round_index:02d}"
        targets = state[low.to_numpy()]
        requests = _requests(targets, frame, state, tried, root)
        generated = _generate(captioners, requests, attempt, round_dir, cfg.shard_size, progress)
        rows = _clean(generated, attempt, captioners, requests, count_tokens, budget)
        rows = _score(rows, frame, meta, root, round_dir, iel, scorers, columns, reference, progress)
        if checker is not None:
            images = rows["pair_id"].map(frame.set_index("pair_id")["image"])
            rows[LAYOUT] = checker(list(images), list(rows["caption"].where(rows["status"] == "scored")))
        state, rows, improved = decide_replacements(state, rows, cfg.min_gain)
        for pid, text in zip(rows["pair_id"], rows["caption"]):
            if isinstance(text, str) and text:
                tried[pid].add(normalise_text(text))
        lineage.append(rows)
        summary = _round_summary(round_index, state, thresholds, targets=len(targets))
        summary.update(
            prompt_id=attempt.prompt_id, temperature=attempt.temperature, seed=attempt.seed,
            proposals=len(rows), scored=int((rows["status"] == "scored").sum()),
            none=int((rows["status"] == "none").sum()), empty=int((rows["status"] == "empty").sum()),
            duplicate=int((rows["status"] == "duplicate").sum()), cut=int(rows["cut"].sum()), improved=improved,
        )  # fmt: skip
        rounds.append(summary)
        if improved == 0:
            stop = "no pair improved"
            break

    return _write_outputs(
        cfg, iel, frame, meta, root, state, lineage, scorers, captioners, columns, thresholds, rounds, stop,
        round0_source, budget, started, progress, checker,
    )  # fmt: skip


def _contradicted(table: pd.DataFrame) -> pd.Series:
    """Rows whose caption the mask contradicts (``layout < 1``); never without a layout check."""
    if LAYOUT not in table:
        return pd.Series(False, index=table.index)
    return (table[LAYOUT] < 1.0 - 1e-9).fillna(False)


def is_low(state: pd.DataFrame, thresholds: dict[str, float]) -> pd.Series:
    """Pairs to repair: fused score below their scene's threshold, or a caption the mask contradicts."""
    limit = state["scene"].map(thresholds).astype(float)
    return (state["fused"] < limit).fillna(False) | _contradicted(state)


def _round_summary(round_index: int, state: pd.DataFrame, thresholds: dict[str, float], targets: int) -> dict[str, Any]:
    return {
        "round": round_index,
        "targets": targets,
        "mean_fused": round(float(state["fused"].mean()), 6),
        "low_after": int(is_low(state, thresholds).sum()),
        "replaced_so_far": int((state["backend"] != ORIGINAL).sum()),
    }


def _round0_scores(
    cfg: CaptionConfig,
    iel: ScoreConfig,
    frame: pd.DataFrame,
    scorers: Sequence[Scorer | CrossFitScorer],
    out: Path,
    progress: bool,
) -> tuple[pd.DataFrame, str]:
    """Round-0 scores: the given ``scores.parquet`` when it fits, else scored now."""
    from dldc.iel.engine import score_manifest

    wanted = [s.scorer_id for s in scorers]
    if cfg.scores and Path(cfg.scores).is_file():
        report_path = Path(cfg.scores).with_name("score.json")
        try:
            given = [s["scorer_id"] for s in json.loads(report_path.read_text(encoding="utf-8"))["scorers"]]
        except (OSError, ValueError, KeyError, TypeError):
            given = None
        table = pd.read_parquet(cfg.scores)
        names = [s.name for s in scorers]
        if given == wanted and all(n in table for n in names) and set(table["pair_id"]) == set(frame["pair_id"]):
            return table, str(cfg.scores)
        log.warning("%s does not fit this manifest and these scorers (%s); scoring round 0 here", cfg.scores, given)
    round0_cfg = iel.model_copy(update={"manifest": cfg.manifest, "out": str(out / ROUNDS_DIR / "round-00")})
    return score_manifest(round0_cfg, scorers=scorers, progress=progress).frame, "computed"


def _requests(
    targets: pd.DataFrame, frame: pd.DataFrame, state: pd.DataFrame, tried: dict[str, set[str]], root: Path
) -> list[CaptionRequest]:
    """One request per low pair: original caption as context, tried and in-use texts to avoid."""
    original = frame.set_index("pair_id")
    in_use = state.groupby("image_id")["caption"].apply(lambda texts: {normalise_text(t) for t in texts}).to_dict()
    requests = []
    for pid, image_id in zip(targets["pair_id"], targets["image_id"]):
        row = original.loc[pid]
        avoid = tuple(sorted(tried[pid] | in_use.get(image_id, set())))
        requests.append(
            CaptionRequest(
                pair_id=pid, image_id=image_id, root=root, image=row["image"], scene=str(row["scene"]),
                caption=row["caption"], image_sha256=row["image_sha256"], avoid=avoid,
            )
        )  # fmt: skip
    return requests


def _generate(
    captioners: Sequence[Captioner],
    requests: list[CaptionRequest],
    attempt: Attempt,
    round_dir: Path,
    shard_size: int,
    progress: bool,
) -> pd.DataFrame:
    """Ask every captioner for every request, shard by shard; finished shards are reused."""
    gen_dir = round_dir / "gen"
    frames = []
    bar = tqdm(
        total=len(requests) * len(captioners), desc=f"caption: round {attempt.round}", unit="pair", disable=not progress
    )
    for index, captioner in enumerate(captioners):
        for shard, start in enumerate(range(0, len(requests), shard_size)):
            batch = requests[start : start + shard_size]
            key = _digest(
                _fingerprint(captioner), asdict(attempt),
                [(r.pair_id, r.image, r.image_sha256, r.scene, r.caption, r.avoid) for r in batch],
            )  # fmt: skip
            path = gen_dir / f"b{index}-{shard:05d}.parquet"
            table = _read_keyed(path, key)
            if table is None:
                proposals = captioner.caption(batch, attempt)
                if len(proposals) != len(batch):
                    raise RuntimeError(
                        f"captioner {_fingerprint(captioner)} answered {len(batch)} requests "
                        f"with {len(proposals)} proposals"
                    )
                table = pa.table(
                    {
                        "pair_id": [r.pair_id for r in batch],
                        "raw": [p.text for p in proposals],
                        "detail": [p.detail for p in proposals],
                    },
                    schema=_GEN_SCHEMA,
                ).replace_schema_metadata({_GEN_KEY: key.encode()})
                write_parquet_checked(path, table)
            part = table.to_pandas()
            part["backend_index"] = index
            frames.append(part)
            bar.update(len(batch))
    bar.close()
    return pd.concat(frames, ignore_index=True)


def _read_keyed(path: Path, key: str) -> pa.Table | None:
    if not checksum_ok(path):  # missing, written by a killed run, or damaged: generate again
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    return table if (table.schema.metadata or {}).get(_GEN_KEY) == key.encode() else None


def _clean(
    generated: pd.DataFrame,
    attempt: Attempt,
    captioners: Sequence[Captioner],
    requests: list[CaptionRequest],
    count_tokens: Callable[[str], int],
    budget: int,
) -> pd.DataFrame:
    """Clean and fit every proposal; mark none / empty / duplicate ones (recorded, never dropped)."""
    by_pair = {r.pair_id: r for r in requests}
    records = []
    proposed: dict[str, set[str]] = {}
    for pid, raw, detail, index in zip(
        generated["pair_id"], generated["raw"], generated["detail"], generated["backend_index"]
    ):
        request, captioner = by_pair[pid], captioners[index]
        caption, tokens, cut, status = None, -1, False, "scored"
        if not isinstance(raw, str):  # None (or NaN from an all-null Parquet column): no candidate
            raw, status = None, "none"
        else:
            cleaned = clean_output(raw)
            if not cleaned:
                status = "empty"
            else:
                caption, cut = fit_to_budget(cleaned, count_tokens, budget)
                tokens = count_tokens(caption)
                key = normalise_text(caption)
                seen = proposed.setdefault(pid, set())
                if key in request.avoid or key in seen:
                    status = "duplicate"
                seen.add(key)
        records.append(
            {
                "candidate_id": f"{pid}@r{attempt.round}.{index}", "pair_id": pid, "image_id": request.image_id,
                "scene": request.scene, "round": attempt.round, "backend": captioner.backend,
                "model": captioner.model_id, "prompt_id": attempt.prompt_id, "temperature": attempt.temperature,
                "seed": attempt.seed, "raw": raw, "caption": caption, "status": status, "detail": detail or "",
                "tokens": tokens, "cut": cut,
            }
        )  # fmt: skip
    return pd.DataFrame.from_records(records)


def _score(
    rows: pd.DataFrame,
    frame: pd.DataFrame,
    meta: ManifestMeta,
    root: Path,
    round_dir: Path,
    iel: ScoreConfig,
    scorers: Sequence[Scorer | CrossFitScorer],
    columns: list[str],
    reference: ReferenceFusion,
    progress: bool,
) -> pd.DataFrame:
    """IEL scores of the scored candidates, through the engine (cross-fitted, cached, sharded)."""
    from dldc.iel.engine import score_manifest

    for column in columns:
        rows[column] = np.nan
    rows["fused"] = np.nan
    scored = rows["status"] == "scored"
    if not scored.any():
        return rows
    pairs = frame.set_index("pair_id")
    manifest_rows = []
    for cid, pid, caption, backend, model in rows.loc[
        scored, ["candidate_id", "pair_id", "caption", "backend", "model"]
    ].itertuples(index=False):
        row = pairs.loc[pid]
        manifest_rows.append(
            {
                "pair_id": cid, "image_id": row["image_id"], "image": row["image"], "image_sha256": row["image_sha256"],
                "width": int(row["width"]), "height": int(row["height"]), "caption": caption,
                "caption_source": f"egl:{backend}:{model}", "scene": row["scene"], "split": row["split"],
            }
        )  # fmt: skip
    path = round_dir / "candidates.parquet"
    write_manifest(path, manifest_rows, _meta_for(meta, root, path, {}))
    result = score_manifest(
        iel.model_copy(update={"manifest": str(path), "out": str(round_dir / "iel")}),
        scorers=scorers,
        progress=progress,
        part=(0, 1),  # raw signals only: fusion is on the round-0 scale below
    )
    raw = result.frame.set_index("pair_id")
    for column in columns:
        rows.loc[scored, column] = rows.loc[scored, "candidate_id"].map(raw[column]).to_numpy(dtype=np.float64)
    rows.loc[scored, "fused"] = reference(rows.loc[scored].reset_index(drop=True))
    return rows


def decide_replacements(
    state: pd.DataFrame, rows: pd.DataFrame, min_gain: float
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Keep, per pair, the best scored candidate if it beats the current caption by ``min_gain``.

    With a layout check, agreeing with the mask comes first: a candidate the mask does not
    contradict replaces a contradicted caption whatever the scores, and a contradicted candidate
    never replaces an uncontradicted caption. Candidates are taken best first within each image,
    so two pairs of one image never end up with the same text.
    """
    rows = rows.assign(accepted=False).reset_index(drop=True)
    current = state.set_index("pair_id", drop=False).to_dict("index")
    in_use: dict[str, list[str]] = {}
    for record in current.values():
        in_use.setdefault(record["image_id"], []).append(normalise_text(record["caption"]))
    copied = [column for column in state.columns if column in rows.columns and column not in ("pair_id", "image_id")]
    scored = rows[(rows["status"] == "scored") & rows["fused"].notna()]
    scored = scored.assign(_agrees=~_contradicted(scored))
    order = scored.sort_values(["image_id", "_agrees", "fused", "candidate_id"], ascending=[True, False, False, True])
    accepted, details, done = [], dict(zip(rows.index, rows["detail"])), set()
    for position, candidate in zip(order.index, order.to_dict("records")):
        pid = candidate["pair_id"]
        if pid in done:
            continue
        mine = current[pid]
        baseline = mine["fused"] if pd.notna(mine["fused"]) else -np.inf
        mine_agrees = not (LAYOUT in mine and mine[LAYOUT] < 1.0 - 1e-9)  # NaN: nothing to contradict
        if mine_agrees and not candidate["_agrees"]:
            continue  # the mask contradicts the candidate, not the current caption
        if not (candidate["_agrees"] and not mine_agrees) and not candidate["fused"] > baseline + min_gain:
            continue
        texts, key = in_use[candidate["image_id"]], normalise_text(candidate["caption"])
        if key in texts:
            details[position] = f"{details[position]}; text already used on this image".lstrip("; ")
            continue
        texts.remove(normalise_text(mine["caption"]))
        texts.append(key)
        mine.update({column: candidate[column] for column in copied})
        mine["source"] = f"egl:{candidate['backend']}:{candidate['model']}"
        accepted.append(position)
        done.add(pid)
    rows.loc[accepted, "accepted"] = True
    rows["detail"] = rows.index.map(details)
    updated = pd.DataFrame.from_records(list(current.values()), columns=state.columns)
    return updated.astype(state.dtypes.to_dict()), rows, len(accepted)


def _layout_report(
    cfg: CaptionConfig, checker: LayoutChecker | None, round0: pd.DataFrame, state: pd.DataFrame
) -> dict[str, Any] | None:
    """``caption.json``'s account of the layout check: how many captions it could check and how many it caught."""
    if checker is None:
        return None
    return {
        "table": checker.table.name,
        "min_share": cfg.layout_min_share,
        "checked_at_start": int(round0[LAYOUT].notna().sum()),
        "contradicted_at_start": int(_contradicted(round0).sum()),
        "contradicted_at_end": int(_contradicted(state).sum()),
        "images_without_mask": len(checker.problems),
        "mask_problems": dict(sorted(checker.problems.items())[:10]),
    }


def _meta_for(meta: ManifestMeta, root: Path, manifest_path: Path, extra: dict[str, Any]) -> ManifestMeta:
    """The input's metadata for a manifest written at ``manifest_path``: root relative to it."""
    relative = os.path.relpath(root, manifest_path.parent.resolve())
    return ManifestMeta(**{**asdict(meta), "root": relative, "extra": {**meta.extra, **extra}})


def _write_outputs(
    cfg: CaptionConfig,
    iel: ScoreConfig,
    frame: pd.DataFrame,
    meta: ManifestMeta,
    root: Path,
    state: pd.DataFrame,
    lineage: list[pd.DataFrame],
    scorers: Sequence[Scorer | CrossFitScorer],
    captioners: Sequence[Captioner],
    columns: list[str],
    thresholds: dict[str, float],
    rounds: list[dict[str, Any]],
    stop: str,
    round0_source: str,
    budget: int,
    started: float,
    progress: bool,
    checker: LayoutChecker | None = None,
) -> CaptionResult:
    from dldc.iel.engine import score_manifest

    out = Path(cfg.out)
    kept = state.set_index("pair_id")
    output = frame.copy()
    output["caption"] = output["pair_id"].map(kept["caption"])
    output["caption_source"] = output["pair_id"].map(kept["source"])
    run_info = {"backends": [_fingerprint(c) for c in captioners], "rounds": len(rounds) - 1, "stop": stop}
    manifest_path = out / MANIFEST_FILE
    write_manifest(
        manifest_path,
        output.to_dict("records"),
        _meta_for(meta, root, manifest_path, {"caption": run_info}),
    )

    captions = pd.concat(lineage, ignore_index=True)
    final = set(kept["candidate_id"])
    captions["selected"] = captions["candidate_id"].isin(final)
    ordered = [
        "candidate_id", "pair_id", "image_id", "scene", "round", "backend", "model", "prompt_id", "temperature",
        "seed", "raw", "caption", "status", "detail", "tokens", "cut", *columns, "fused",
        *([LAYOUT] if checker is not None else []), "accepted", "selected",
    ]  # fmt: skip
    captions = captions[ordered].astype(
        {"round": "int32", "tokens": "int32", "temperature": "float64", "seed": "int64"}
    )
    write_parquet(out / CAPTIONS_FILE, pa.Table.from_pandas(captions, preserve_index=False))

    final_scores = score_manifest(
        iel.model_copy(update={"manifest": str(manifest_path), "out": str(out)}), scorers=scorers, progress=progress
    )
    replaced = output[output["caption_source"] != ORIGINAL]
    still_low = is_low(state, thresholds)
    report = {
        "manifest": str(cfg.manifest),
        "round0_scores": round0_source,
        "backends": [{"backend": c.backend, "model": c.model_id, "fingerprint": _fingerprint(c)} for c in captioners],
        "scorers": [{"name": s.name, "scorer_id": s.scorer_id} for s in scorers],
        "signals": columns,
        "fusion": iel.fusion,
        "threshold": cfg.threshold,
        "threshold_by_scene": cfg.threshold_by_scene,
        "thresholds_fused": {scene: round(value, 6) for scene, value in thresholds.items()},
        "token_budget": budget,
        "min_gain": cfg.min_gain,
        "pairs": len(output),
        "low_at_start": rounds[0]["targets"],
        "rounds": rounds,
        "stop": stop,
        "replaced": len(replaced),
        "replaced_by_backend": replaced["caption_source"].value_counts().sort_index().to_dict(),
        "still_low": int(still_low.sum()),
        "layout_check": _layout_report(cfg, checker, lineage[0], state),
        "candidates": int((captions["round"] > 0).sum()),
        "seconds": round(time.perf_counter() - started, 3),
    }
    report_path = out / REPORT_FILE
    write_json(report_path, report)
    return CaptionResult(manifest_path, out / CAPTIONS_FILE, final_scores.scores, report_path, report, output)
