"""The IEL engine: score every pair of a manifest with every scorer — batched, cached, resumable.

How a run goes:

1. The manifest is cut into shards of ``shard_size`` consecutive pairs (the unit of resume).
2. For each shard and scorer, images and captions the embedding store
   (:mod:`dldc.iel.store`) lacks are encoded: each distinct image file (by sha256) and each
   distinct caption text once, images decoded and preprocessed in batches
   (:mod:`dldc.iel.image_batches`; by worker processes kept for the run when ``workers`` > 0)
   that halve and retry on CUDA out-of-memory. A cross-fitted
   scorer encodes each pair with the fold model that never saw its image and, for the
   in-domain scorer with text folds, never trained on its caption text (:func:`pair_folds`).
3. The pair's score is the cosine of the two L2-normalised embeddings. The shard's raw
   scores are written atomically to ``shards/shard-<i>.parquet`` with a key over its pairs
   and scorers, and its sha256 beside it (``shard-<i>.parquet.sha256``); a re-run skips every
   shard whose key and checksum match, so a killed run resumes where it stopped and ends with
   the same result as an uninterrupted one, and a damaged shard is recomputed, never trusted.
4. The shards are joined and fused per scene (:mod:`dldc.iel.fuse`) into ``scores.parquet``;
   fanned-out parts are joined and fused by :func:`dldc.iel.fuse.gather_scores`.

``scores.parquet`` columns: ``pair_id, image_id, scene, split``, then per scorer ``<name>``
(cosine), ``<name>_clipscore`` (``100·max(cos, 0)``), ``<name>_tokens`` (untruncated token
count), ``<name>_truncated`` (caption longer than the scorer's context), ``<name>_scene_pct``;
for a scorer with a scene head (the in-domain one) also ``<name>_scenefit`` (``P(image's scene |
caption)``, :mod:`dldc.iel.scene_text`) and ``<name>_scenefit_scene_pct``, fused like a scorer;
then ``fused``, ``scene_percentile``, ``disagree``. ``score.json`` holds the scorers, counts
of truncated captions, cache and shard reuse, and timings.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from dldc.config import ScoreConfig
from dldc.data.manifest import dataset_root, read_manifest
from dldc.iel.base import CrossFitScorer, Scorer
from dldc.iel.fuse import REPORT_FILE, SCENEFIT_SUFFIX, SCORES_FILE, ScoreResult, fuse_scores
from dldc.iel.image_batches import BatchPreprocess, ImageBatches, batch_preprocess
from dldc.iel.store import EmbeddingStore, text_key
from dldc.io import (
    checksum_ok,
    output_lock,
    remove_stale_temps,
    remove_with_checksum,
    write_json,
    write_parquet,
    write_parquet_checked,
)

log = logging.getLogger(__name__)

SHARD_KEY = b"dldc.shard_key"


class _Encoder:
    """Runs a scorer's encoders in batches; halves the batch size on CUDA out-of-memory."""

    def __init__(self, batch_size: int, image_batches: ImageBatches, stats: dict[str, int]):
        self.batch_size = batch_size
        self.image_batches = image_batches
        self.stats = stats
        # (scorer's preprocess, its batched form): compared with ==, so that a bound method (a new
        # object at each access) finds its entry, and held, so that no id is ever reused.
        self._batched: list[tuple[Any, BatchPreprocess]] = []

    def _batch_preprocess(self, preprocess: Any) -> BatchPreprocess:
        for known, batched in self._batched:
            if known is preprocess or known == preprocess:
                return batched
        batched = batch_preprocess(preprocess)
        self._batched.append((preprocess, batched))
        return batched

    def images(self, scorer: Scorer, paths: list[Path], bar: tqdm) -> torch.Tensor:
        chunks = []
        for pixels in self.image_batches(self._batch_preprocess(scorer.preprocess), paths, self.batch_size):
            if scorer.device.type == "cuda":
                pixels = pixels.pin_memory()
            chunks.append(self._run(scorer.encode_images, pixels))
            bar.update(len(pixels))
        return torch.cat(chunks)

    def texts(self, scorer: Scorer, texts: list[str]) -> torch.Tensor:
        chunks = [
            self._run(scorer.encode_texts, texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(chunks)

    def _run(self, encode: Callable[[Any], torch.Tensor], batch: Any) -> torch.Tensor:
        # Encode in slices of the current limit; on OOM halve the limit for good and retry.
        outputs, start = [], 0
        while start < len(batch):
            size = min(self.batch_size, len(batch) - start)
            try:
                outputs.append(encode(batch[start : start + size]))
                start += size
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self.batch_size = max(1, size // 2)
                self.stats["oom_retries"] += 1
                log.warning("out of memory: batch size halved to %d", self.batch_size)
                torch.cuda.empty_cache()
        return torch.cat(outputs)


def shard_key(part: pd.DataFrame, scorer_ids: Sequence[str]) -> str:
    """A digest of everything a shard's scores depend on: pairs, images, captions, scorers."""
    digest = hashlib.sha256("\n".join(scorer_ids).encode())
    for column in ("pair_id", "image_id", "image_sha256", "caption"):
        # tolist() first: iterating an Arrow-backed column element by element is ~10x slower.
        digest.update("\x1f".join(part[column].astype(str).tolist()).encode())
    return digest.hexdigest()


def score_manifest(
    cfg: ScoreConfig,
    scorers: Sequence[Scorer | CrossFitScorer] | None = None,
    progress: bool = True,
    part: tuple[int, int] | None = None,
) -> ScoreResult:
    """Score every pair of ``cfg.manifest`` (see the module docstring).

    Args:
        cfg: the ``score`` section of the configuration.
        scorers: already-loaded scorers; ``None`` loads ``cfg.scorers``.
        progress: show progress bars.
        part: ``(i, n)`` scores only the ``i``-th of ``n`` equal slices of the manifest
            (for fan-out); the result holds raw scores only — fuse all parts with
            :func:`gather_scores`, since per-scene ranks need every pair.

    Returns:
        The written paths, the report and the score table.

    Raises:
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _score_manifest(cfg, scorers, progress, part)


def _score_manifest(
    cfg: ScoreConfig,
    scorers: Sequence[Scorer | CrossFitScorer] | None,
    progress: bool,
    part: tuple[int, int] | None,
) -> ScoreResult:
    started = time.perf_counter()
    frame, meta = read_manifest(cfg.manifest)
    root = dataset_root(cfg.manifest, meta)
    if part is not None:
        frame = _slice(frame, *part)
    if scorers is None:
        from dldc.iel.factory import create_scorer

        scorers = [
            create_scorer(spec, device=cfg.device, precision=cfg.precision, trust_remote_code=cfg.trust_remote_code)
            for spec in cfg.scorers
        ]
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be distinct, got {names}; pass distinct scorers")
    out = Path(cfg.out)
    shards_dir = out / "shards"
    for folder in (out, shards_dir):  # what killed runs left (the store may be shared: not there)
        remove_stale_temps(folder, recursive=False)
    store_root = Path(cfg.cache) if cfg.cache else out / "embeddings"
    stores: dict[str, EmbeddingStore] = {}
    stats = {"images_encoded": 0, "texts_encoded": 0, "shards_total": 0, "shards_reused": 0, "oom_retries": 0}
    scorer_ids = [s.scorer_id for s in scorers]

    n_shards = max(1, -(-len(frame) // cfg.shard_size))
    stats["shards_total"] = n_shards
    tables = []
    bar = tqdm(total=len(frame), desc="score: pairs", unit="pair", disable=not progress)
    # One set of image-decoding workers for the whole run, not one per shard.
    with ImageBatches(cfg.workers) as image_batches:
        encoder = _Encoder(cfg.batch_size, image_batches, stats)
        for index in range(n_shards):
            rows = frame.iloc[index * cfg.shard_size : (index + 1) * cfg.shard_size]
            key = shard_key(rows, scorer_ids)
            path = shards_dir / f"shard-{index:05d}.parquet"
            table = _read_shard(path, key)
            if table is None:
                columns: dict[str, Any] = {"pair_id": rows["pair_id"].tolist()}
                for scorer in scorers:
                    cosine, tokens, context = _score_rows(scorer, rows, root, stores, store_root, encoder, bar)
                    columns[scorer.name] = cosine
                    columns[f"{scorer.name}_tokens"] = tokens
                    columns[f"{scorer.name}_truncated"] = [t > context for t in tokens]
                    if has_scene_head(scorer):
                        columns[f"{scorer.name}{SCENEFIT_SUFFIX}"] = _scene_fit_rows(scorer, rows)
                table = pa.table(columns).replace_schema_metadata({SHARD_KEY: key.encode()})
                write_parquet_checked(path, table)
            else:
                stats["shards_reused"] += 1
            tables.append(table)
            bar.update(len(rows))
    bar.close()
    for stale in shards_dir.glob("shard-*.parquet"):
        if int(stale.stem.split("-")[1]) >= n_shards:
            remove_with_checksum(stale)

    raw = pa.concat_tables(tables).to_pandas()
    scored = (
        frame[["pair_id", "image_id", "scene", "split"]]
        .reset_index(drop=True)
        .join(raw.drop(columns="pair_id").reset_index(drop=True))
    )
    signals = [f"{s.name}{SCENEFIT_SUFFIX}" for s in scorers if has_scene_head(s)]
    if part is None:
        scored = fuse_scores(scored, names, cfg.fusion, cfg.disagreement, signals=signals)
    seconds = time.perf_counter() - started
    report = {
        "manifest": str(Path(cfg.manifest)),
        "part": list(part) if part else None,
        "pairs": len(scored),
        "scorers": [_describe(s) for s in scorers],
        "fusion": cfg.fusion if part is None else None,
        "disagreement_threshold": cfg.disagreement,
        "truncated_captions": {n: int(scored[f"{n}_truncated"].sum()) for n in names},
        "disagreeing_pairs": int(scored["disagree"].sum()) if "disagree" in scored else None,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(len(scored) / seconds, 1) if seconds else None,
        **stats,
    }
    for name, count in report["truncated_captions"].items():
        if count:
            log.warning("%d captions exceed scorer %s's context and were truncated for it", count, name)
    write_parquet(out / SCORES_FILE, pa.Table.from_pandas(scored, preserve_index=False))
    write_json(out / REPORT_FILE, report)
    return ScoreResult(out / SCORES_FILE, out / REPORT_FILE, report, scored)


def _slice(frame: pd.DataFrame, index: int, count: int) -> pd.DataFrame:
    if not 0 <= index < count:
        raise ValueError(f"part index must be in [0, {count}), got {index}")
    size = -(-len(frame) // count)
    return frame.iloc[index * size : (index + 1) * size]


def _read_shard(path: Path, key: str) -> pa.Table | None:
    if not checksum_ok(path):  # missing, written by a killed run, or damaged: recompute
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None  # damaged (e.g. copied by hand): recompute
    return table if (table.schema.metadata or {}).get(SHARD_KEY) == key.encode() else None


def _score_rows(
    scorer: Scorer | CrossFitScorer,
    rows: pd.DataFrame,
    root: Path,
    stores: dict[str, EmbeddingStore],
    store_root: Path,
    encoder: _Encoder,
    bar: tqdm,
) -> tuple[list[float], list[int], int]:
    """Cosine, untruncated token count and context length for each row, in row order."""
    if isinstance(scorer, CrossFitScorer) and not isinstance(scorer, Scorer):
        cosine = [0.0] * len(rows)
        tokens = [0] * len(rows)
        context = 0
        folds = pair_folds(scorer, rows)
        for fold in sorted(set(folds)):
            positions = [i for i, f in enumerate(folds) if f == fold]
            sub = _score_rows(scorer.fold_model(fold), rows.iloc[positions], root, stores, store_root, encoder, bar)
            for position, value, count in zip(positions, sub[0], sub[1]):
                cosine[position], tokens[position] = value, count
            context = sub[2]
        return cosine, tokens, context

    # Half-precision embeddings differ slightly from fp32 ones: they are cached apart.
    store_id = f"{scorer.scorer_id}|{getattr(scorer, 'precision', 'fp32')}"
    store = stores.get(store_id)
    if store is None:
        store = stores[store_id] = EmbeddingStore(store_root, store_id)
    image_keys = [bytes.fromhex(sha) for sha in rows["image_sha256"].tolist()]
    captions = rows["caption"].tolist()
    caption_keys = [text_key(c) for c in captions]

    missing_images = store.missing("image", image_keys)
    if missing_images:
        path_of = dict(zip(image_keys, rows["image"].tolist()))
        with tqdm(
            total=len(missing_images), desc=f"score: {scorer.name} images", unit="img", leave=False, disable=bar.disable
        ) as image_bar:
            embeddings = encoder.images(scorer, [root / path_of[k] for k in missing_images], image_bar)
        store.add("image", missing_images, embeddings)
        encoder.stats["images_encoded"] += len(missing_images)
    missing_texts = store.missing("text", caption_keys)
    if missing_texts:
        text_of = dict(zip(caption_keys, captions))
        texts = [text_of[k] for k in missing_texts]
        store.add("text", missing_texts, encoder.texts(scorer, texts), scorer.token_counts(texts))
        encoder.stats["texts_encoded"] += len(missing_texts)

    cosine = (store.get("image", image_keys) * store.get("text", caption_keys)).sum(dim=-1)
    return cosine.tolist(), store.tokens(caption_keys), scorer.context_length


def pair_folds(scorer: CrossFitScorer, rows: pd.DataFrame) -> list[int]:
    """The fold model that scores each row: one that trained on neither its image nor, where the
    scorer knows its training texts (``fold_for``), its caption text (see
    :meth:`dldc.iel.indomain.IndomainScorer.fold_for`); else the image's held-out fold."""
    fold_for = getattr(scorer, "fold_for", None)
    if fold_for is None:
        return [scorer.fold_of(image_id) for image_id in rows["image_id"].tolist()]
    return [fold_for(image, caption) for image, caption in zip(rows["image_id"].tolist(), rows["caption"].tolist())]


def has_scene_head(scorer: Scorer | CrossFitScorer) -> bool:
    """Whether a cross-fitted scorer also reports caption–scene consistency (the in-domain one can)."""
    return bool(getattr(scorer, "has_scene_head", False))


def _scene_fit_rows(scorer: CrossFitScorer, rows: pd.DataFrame) -> list[float]:
    """``P(image's scene | caption)`` of each row, from the fold model that never saw the pair (:func:`pair_folds`)."""
    values = [0.0] * len(rows)
    folds = pair_folds(scorer, rows)
    captions, scenes = rows["caption"].tolist(), rows["scene"].astype(str).tolist()
    for fold in sorted(set(folds)):
        positions = [i for i, f in enumerate(folds) if f == fold]
        fitted = scorer.fold_model(fold).scene_fit([captions[i] for i in positions], [scenes[i] for i in positions])
        for position, value in zip(positions, fitted):
            values[position] = value
    return values


def _describe(scorer: Scorer | CrossFitScorer) -> dict[str, Any]:
    info: dict[str, Any] = {"scorer_id": scorer.scorer_id, "name": scorer.name}
    if isinstance(scorer, CrossFitScorer) and not isinstance(scorer, Scorer):
        info["folds"] = scorer.n_folds
        info["scene_head"] = has_scene_head(scorer)
    else:
        info["context_length"] = scorer.context_length
    return info
