"""The ``onnx:DIR`` scorer backend: an exported scorer run with ONNX Runtime.

:func:`load_onnx` opens a folder written by ``dldc export-scorer`` and returns an
:class:`OnnxScorer` (or, for the in-domain model, an :class:`OnnxCrossFitScorer` of K fold
scorers): the same :class:`~dldc.iel.base.Scorer` protocol as the torch backends, so the engine,
the embedding store and fusion use it unchanged. It refuses a folder whose files no
longer match the checksums in ``export.json`` or whose parity gate did not pass.

Identity: ``scorer_id`` is ``onnx-<precision>:<12 hex digest of the graphs and pre-processing>:<source
scorer id>`` — never the torch id, so embedding caches and shard keys keep the two apart — while
``name`` is the source scorer's column name: switching ``score.scorers`` from ``indomain:data/scorer``
to ``onnx:data/scorer-onnx`` keeps the ``indomain`` columns that later stages read.

Execution providers, in order of preference (:func:`dldc.iel.onnx_providers.choose_providers`):

1. ``TensorrtExecutionProvider`` — engines built by ONNX Runtime with dynamic-batch optimisation
   profiles, cached on disk per GPU model and TensorRT version (:func:`dldc.iel.onnx_providers.ort_trt_options`);
2. ``CUDAExecutionProvider``;
3. ``CPUExecutionProvider``.

int8 graphs (dynamic quantization) run on the CPU provider: TensorRT only runs QDQ int8 graphs
built with calibration, and CUDA has no kernels for the dynamic-quantization ops. Which provider
runs, and why the preferred ones do not, is logged at INFO when the scorer loads (and kept in
:attr:`OnnxScorer.provider_note`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dldc.iel.base import file_digest, l2_normalise
from dldc.iel.onnx_processing import load_processing
from dldc.iel.onnx_providers import GPU_PROVIDERS, PREFERENCE, choose_providers, make_session

log = logging.getLogger(__name__)

EXPORT_FILE = "export.json"
FORMAT_VERSION = 1


class ExportInvalidError(ValueError):
    """An export folder that must not be used (incomplete, modified, or refused by its parity gate)."""


class OnnxScorer:
    """A :class:`~dldc.iel.base.Scorer` running an exported image tower and text tower.

    Build it with :func:`load_onnx` (``onnx:DIR``).

    Attributes:
        scorer_id: ``onnx-<precision>:<digest>:<source scorer id>`` (fold models add ``#fold<k>``).
        name: the source scorer's column name.
        context_length: the text tower's token budget.
        device: ``cuda`` when a GPU provider runs, else ``cpu`` (embeddings are always returned on the CPU).
        precision: ``fp32``, ``fp16`` or ``int8`` (the graph's, fixed at export).
        embed_dim: width of the embeddings.
        provider: the execution provider that runs the graphs.
        provider_note: why that provider (and not a preferred one).
        preprocess: the recorded pre-processing, rebuilt (picklable).
    """

    def __init__(
        self,
        image_session: Any,
        text_session: Any,
        preprocess: Any,
        text_inputs: Any,
        *,
        scorer_id: str,
        name: str,
        context_length: int,
        embed_dim: int,
        precision: str,
        provider_note: str = "",
        scene_model: Any | None = None,
    ):
        self.image_session = image_session
        self.text_session = text_session
        self.preprocess = preprocess
        self.text_inputs = text_inputs
        self.scorer_id = scorer_id
        self.name = name
        self.context_length = context_length
        self.embed_dim = embed_dim
        self.precision = precision
        self.provider = image_session.get_providers()[0]
        self.provider_note = provider_note
        self.device = torch.device("cuda" if self.provider in GPU_PROVIDERS else "cpu")
        self.scene_model = scene_model
        self._image_input = image_session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxScorer({self.scorer_id!r}, provider={self.provider}, precision={self.precision})"

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed batch → ``(N, D)`` L2-normalised float32 CPU embeddings."""
        if len(pixels) == 0:
            return torch.empty(0, self.embed_dim)
        array = np.ascontiguousarray(pixels.detach().cpu().float().numpy())
        (features,) = self.image_session.run(None, {self._image_input: array})
        return l2_normalise(torch.from_numpy(features))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → ``(N, D)`` L2-normalised float32 CPU embeddings (truncated to ``context_length``)."""
        if not texts:
            return torch.empty(0, self.embed_dim)
        (features,) = self.text_session.run(None, self.text_inputs(list(texts)))
        return l2_normalise(torch.from_numpy(features))

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token count of each text without truncation, special tokens included."""
        return self.text_inputs.token_counts(list(texts))

    def scene_fit(self, texts: list[str], scenes: list[str]) -> list[float]:
        """The in-domain fold model's ``P(scene | caption)`` (the scene head is copied as is, not exported).

        Raises:
            RuntimeError: the source scorer had no scene head.
        """
        if self.scene_model is None:
            raise RuntimeError("this exported scorer has no scene head (its source had none)")
        from dldc.iel.scene_text import content_tokens

        tokenizer = self.text_inputs.tokenizer
        tokens = tokenizer(list(texts), context_length=self.context_length)
        captions = content_tokens(tokens, tokenizer.sot_token_id, tokenizer.eot_token_id)
        return self.scene_model.probability(captions, scenes).tolist()


class OnnxCrossFitScorer:
    """The K exported fold models of a cross-fitted (in-domain) scorer: a :class:`~dldc.iel.base.CrossFitScorer`.

    Attributes:
        scorer_id, name, n_folds: as the source's, the id in the ``onnx-<precision>:…`` form.
        has_scene_head: whether the folds carry the source's caption–scene model.
        folds: ``{image_id: fold}``; unseen ids fall back to :func:`dldc.iel.folds.hash_fold`.
        trained_by: the source's ``texts.parquet`` (text folds), for :meth:`fold_for`; empty otherwise.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], device: str, threads: int):
        import pyarrow.parquet as pq

        self.path = folder
        self.meta = meta
        self.scorer_id = meta["scorer_id"]
        self.name = meta["name"]
        self.n_folds = int(meta["crossfit"]["folds"])
        self.seed = int(meta["crossfit"]["seed"])
        self.has_scene_head = bool(meta["crossfit"].get("scene_head", False))
        table = pq.read_table(folder / meta["crossfit"]["folds_file"])
        self.folds = dict(zip(table["image_id"].to_pylist(), table["fold"].to_pylist()))
        self.trained_by: dict[str, int] = {}
        if meta["crossfit"].get("texts_file"):
            texts = pq.read_table(folder / meta["crossfit"]["texts_file"])
            self.trained_by = dict(zip(texts["text"].to_pylist(), texts["trained_by"].to_pylist()))
        self._device = device
        self._threads = threads
        self._models: dict[int, OnnxScorer] = {}

    def __repr__(self) -> str:
        return f"OnnxCrossFitScorer({self.scorer_id!r}, folds={self.n_folds})"

    def fold_of(self, image_id: str) -> int:
        """The fold an image was held out in (as the source scorer decides)."""
        from dldc.iel.folds import hash_fold

        fold = self.folds.get(image_id)
        return int(fold) if fold is not None else hash_fold(image_id, self.n_folds, self.seed)

    def fold_for(self, image_id: str, caption: str) -> int:
        """The fold model to score ``caption`` on ``image_id`` with, as the source scorer decides
        (:meth:`dldc.iel.indomain.IndomainScorer.fold_for`)."""
        from dldc.iel.folds import scoring_fold, text_keys

        fold = self.fold_of(image_id)
        if not self.trained_by:
            return fold
        key = text_keys(self.fold_model(fold).text_inputs.tokenizer, [caption])[0]
        return scoring_fold(fold, self.trained_by.get(key, 0), self.n_folds)

    def fold_model(self, fold: int) -> OnnxScorer:
        """Fold ``fold``'s exported model (sessions created on first use)."""
        if not 0 <= fold < self.n_folds:
            raise IndexError(f"fold {fold} out of range 0..{self.n_folds - 1}")
        if fold not in self._models:
            scene_model = None
            if self.has_scene_head:
                from dldc.iel.scene_text import SceneCaptionModel

                scene_model = SceneCaptionModel.load(self.path / self.meta["crossfit"]["scene_files"][fold])
            self._models[fold] = _open_towers(
                self.path,
                self.meta,
                self.meta["towers"][fold],
                f"{self.scorer_id}#fold{fold}",
                self._device,
                self._threads,
                scene_model,
            )
        return self._models[fold]


def load_onnx(
    folder: str | Path, device: str | torch.device = "auto", threads: int = 0, verify: bool = True
) -> OnnxScorer | OnnxCrossFitScorer:
    """Open an export folder as a scorer (the ``onnx:DIR`` spec).

    Args:
        folder: written by ``dldc export-scorer``.
        device: ``auto`` (GPU providers when onnxruntime has them and CUDA is visible), ``cpu``,
            ``cuda`` / ``cuda:N``.
        threads: ONNX Runtime intra-op threads (0 = its default, one per physical core).
        verify: check every file against the sha256 in ``export.json`` (on by default).

    Returns:
        An :class:`OnnxScorer`, or an :class:`OnnxCrossFitScorer` for an exported in-domain scorer.

    Raises:
        FileNotFoundError: no ``export.json`` in the folder.
        ExportInvalidError: files modified or missing since the export, a refused export, or a
            format this version does not read.
    """
    folder = Path(folder)
    meta = read_export_meta(folder)
    if not meta.get("parity", {}).get("passed"):
        raise ExportInvalidError(f"{folder}: the export did not pass its parity gate; re-export it")
    if verify:
        verify_files(folder, meta)
    return open_export(folder, meta, str(device), threads)


def open_export(folder: Path, meta: dict[str, Any], device: str, threads: int) -> OnnxScorer | OnnxCrossFitScorer:
    """Build the scorer of an export folder from its metadata, without the gate and checksum checks."""
    if meta.get("crossfit"):
        return OnnxCrossFitScorer(folder, meta, device, threads)
    return _open_towers(folder, meta, meta["towers"][0], meta["scorer_id"], device, threads, None)


def read_export_meta(folder: Path) -> dict[str, Any]:
    """``export.json`` of an export folder, with its format checked."""
    path = folder / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an exported scorer (no {EXPORT_FILE}); create it with `dldc export-scorer`"
        )
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version")
        raise ExportInvalidError(f"{path}: format version {version!r}, this dldc reads {FORMAT_VERSION}")
    return meta


def verify_files(folder: Path, meta: dict[str, Any]) -> None:
    """Check every file listed in ``export.json`` against its sha256.

    Raises:
        ExportInvalidError: a file is missing or its bytes changed since the export.
    """
    bad = []
    for name, expected in sorted(meta["files"].items()):
        path = folder / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif file_digest(str(path), length=64) != expected:
            bad.append(f"{name} (modified)")
    if bad:
        raise ExportInvalidError(
            f"{folder}: files differ from the verified export: {', '.join(bad)}. An exported scorer is only "
            "usable as it passed its parity gate; re-run `dldc export-scorer`."
        )


def _open_towers(
    folder: Path,
    meta: dict[str, Any],
    towers: dict[str, str],
    scorer_id: str,
    device: str,
    threads: int,
    scene_model: Any | None,
) -> OnnxScorer:
    precision = meta["precision"]
    image_providers, note = choose_providers(device, precision, profiles=meta["profiles"]["image"])
    text_providers, _ = choose_providers(device, precision, profiles=meta["profiles"]["text"])
    image = make_session(folder / towers["image"], image_providers, precision, threads)
    text = make_session(folder / towers["text"], text_providers, precision, threads)
    running = image.get_providers()[0]
    wanted = image_providers[0] if isinstance(image_providers[0], str) else image_providers[0][0]
    if running != wanted:
        note = f"{note}; {wanted} failed to initialise (missing CUDA/TensorRT libraries?), fell back".lstrip("; ")
    preprocess, text_inputs = load_processing(folder, meta["processing"], meta["text_sequence"])
    scorer = OnnxScorer(
        image,
        text,
        preprocess,
        text_inputs,
        scorer_id=scorer_id,
        name=meta["name"],
        context_length=int(meta["context_length"]),
        embed_dim=int(meta["embed_dim"]),
        precision=precision,
        provider_note=note,
        scene_model=scene_model,
    )
    if not scorer_id.rpartition("#fold")[2].isdigit() or scorer_id.endswith("#fold0"):
        log.info("onnx scorer %s runs on %s (preference %s) %s", folder, running, " > ".join(PREFERENCE), note)
    return scorer
