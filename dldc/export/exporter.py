"""``dldc export-scorer``: export an IEL scorer to ONNX, convert it, gate it on parity, describe it.

How an export goes (:func:`export_scorer`):

1. load the source scorer (any spec: ``open_clip:…`` incl. RemoteCLIP checkpoints, ``hf:…``,
   ``indomain:…``) in fp32;
2. export its image and text towers to ONNX (:mod:`dldc.export.towers`, :mod:`dldc.export.onnx_export`;
   the K fold models of the in-domain scorer share one traced graph with their own weights);
3. convert to the asked precision (fp16 with fp32 I/O, or int8 dynamic quantization);
4. run the parity gate (:mod:`dldc.export.parity`) on a calibration sample of real pairs (the
   flip-rate gate is decided on the upper end of the flip rate's 95% interval);
5. write ``export.json`` and move the folder into place. A failed gate raises
   :class:`ExportRefusedError` with the figures, and nothing is written at ``out`` (an earlier
   export there, which passed its own gate, is left as it was).

Export folder::

    out/
      export.json            what it is: scorer id, source spec / id / checksum, precision, opset,
                             exporter and versions, inputs, pre-processing, TensorRT profiles,
                             parity figures and gates, sha256 of every file below
      image.onnx, text.onnx  the towers (in-domain: fold-<k>/image.onnx, fold-<k>/text.onnx)
      open_clip_config.json  | hf_processor/   the recorded pre-processing and tokenizer
      folds.parquet          (in-domain) the held-out fold of each image
      fold-<k>.scene.safetensors  (in-domain with a scene head) copied as is

``onnx:<out>`` then scores with it (:mod:`dldc.iel.onnx_scorer`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dldc.config import ExportConfig
from dldc.export.onnx_export import EXPORTER, convert_precision, export_tower, swap_weights
from dldc.export.parity import CalibrationSet, Gates, calibration_set, gate_failures, parity_figures
from dldc.export.towers import TowerPair, towers_of
from dldc.iel.base import CrossFitScorer, Scorer, file_digest
from dldc.iel.onnx_scorer import EXPORT_FILE, FORMAT_VERSION, open_export, read_export_meta, verify_files
from dldc.io import atomic_dir, write_json

log = logging.getLogger(__name__)


class ExportRefusedError(ValueError):
    """The export missed its parity gate; ``figures`` holds what was measured."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


@dataclass
class ExportResult:
    """What :func:`export_scorer` wrote."""

    path: Path
    meta: dict[str, Any]


def gates_of(cfg: ExportConfig) -> Gates:
    """The parity thresholds of an ``export`` config section."""
    return Gates(
        min_cosine_fp32=cfg.min_cosine_fp32,
        min_cosine_fp16=cfg.min_cosine_fp16,
        min_cosine_int8=cfg.min_cosine_int8,
        min_spearman=cfg.min_spearman,
        max_flip_rate=cfg.max_flip_rate,
        drop_ratio=cfg.drop_ratio,
    )


def content_digest(files: dict[str, str], processing: dict[str, Any]) -> str:
    """12 hex digits over the graphs' and pre-processing files' checksums and the pre-processing record."""
    digest = hashlib.sha256(json.dumps({"files": files, "processing": processing}, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def export_scorer(
    cfg: ExportConfig,
    source: Scorer | CrossFitScorer | None = None,
    calibration: CalibrationSet | None = None,
    progress: bool = True,
    from_export: str | Path | None = None,
) -> ExportResult:
    """Export, convert and gate a scorer into ``cfg.out`` (see the module docstring).

    Args:
        cfg: the ``export`` section.
        source: an already-loaded source scorer (``None`` loads ``cfg.scorer``).
        calibration: an already-built calibration set (``None`` samples ``cfg.calibration_manifest``).
        progress: show progress bars.
        from_export: an fp32 export of the same weights to convert instead of tracing again (derive
            the int8 CPU and fp16 GPU exports from one fp32 export in seconds); still gated.

    Returns:
        The export folder and its ``export.json`` content.

    Raises:
        ExportRefusedError: the parity gate failed (nothing written at ``cfg.out``).
        ValueError: ``cfg.scorer`` is an ``onnx:`` spec or cannot be exported, or ``from_export``
            is not an fp32 export of the same weights.

    Example:
        ``dldc export-scorer --scorer indomain:data/scorer --out data/scorer-onnx --precision int8``
    """
    started = time.perf_counter()
    if cfg.scorer.startswith("onnx:"):
        raise ValueError(f"{cfg.scorer} is already an export; export its source scorer instead")
    if cfg.opt_batch > cfg.max_batch:
        raise ValueError(f"export.opt_batch ({cfg.opt_batch}) must not exceed export.max_batch ({cfg.max_batch})")
    if source is None:
        from dldc.iel.factory import create_scorer

        source = create_scorer(cfg.scorer, device=cfg.device, precision="fp32")
    _set_fp32(source)
    checksum = source_checksum(source)
    if calibration is None:
        calibration = calibration_set(cfg.calibration_manifest, cfg.calibration_pairs, cfg.seed)
    timings: dict[str, float] = {}

    with atomic_dir(cfg.out) as tmp:
        tick = time.perf_counter()
        if from_export is not None:
            layout = _copy_fp32_export(Path(from_export), tmp, checksum)
        else:
            layout = _trace(source, tmp, cfg)
        for towers in layout["towers"]:
            for graph in towers.values():
                convert_precision(
                    tmp / graph,
                    tmp / graph,
                    cfg.precision,
                    cfg.int8_ops,
                    cfg.int8_per_channel,
                    cfg.int8_reduce_range,
                    cfg.int8_weight_type,
                )
        timings["export_s"] = time.perf_counter() - tick

        files = {
            str(path.relative_to(tmp)): file_digest(str(path), length=64)
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        digest = content_digest(files, layout["processing"])
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "scorer_id": f"onnx-{cfg.precision}:{digest}:{source.scorer_id}",
            "name": source.name,
            "precision": cfg.precision,
            "opset": layout.pop("opset", cfg.opset),
            "exporter": layout.pop("exporter", f"{EXPORTER}, torch {torch.__version__}"),
            "versions": _versions(),
            "source": {"spec": cfg.scorer, "scorer_id": source.scorer_id, "checksum": checksum},
            **layout,
            "profiles": _profiles(layout, cfg),
            "int8": {
                "ops": list(cfg.int8_ops),
                "per_channel": cfg.int8_per_channel,
                "reduce_range": cfg.int8_reduce_range,
                "weight_type": cfg.int8_weight_type,
            }
            if cfg.precision == "int8"
            else None,
            "converted_from": str(from_export) if from_export is not None else None,
            "files": files,
        }

        tick = time.perf_counter()
        candidate = open_export(tmp, meta, device=cfg.device, threads=0)
        gates = gates_of(cfg)
        figures = parity_figures(
            source,
            candidate,
            calibration,
            gates.drop_ratio,
            batch_size=cfg.batch_size,
            progress=progress,
            confidence=gates.confidence,
        )
        timings["parity_s"] = time.perf_counter() - tick
        failures = gate_failures(figures, cfg.precision, gates)
        provider = _provider(candidate)
        meta["parity"] = {
            "passed": not failures,
            "failures": failures,
            "figures": figures,
            "gates": {**gates.__dict__, "min_cosine": gates.min_cosine(cfg.precision)},
            "calibration": calibration.source,
            "provider": provider,
        }
        if failures:
            raise ExportRefusedError(
                f"export of {cfg.scorer} ({cfg.precision}) refused by its parity gate: {'; '.join(failures)}. "
                f"Figures on {figures['pairs']} calibration pairs ({provider}): "
                f"cosine min {figures['cosine_min']:.6f}, "
                f"Spearman {figures['spearman']:.5f}, flip rate {figures['flip_rate']:.4%} "
                f"({gates.confidence:.0%} interval {figures['flip_rate_low']:.2%}..{figures['flip_rate_high']:.2%}). "
                "Nothing was written to "
                f"{cfg.out}. {_hint(cfg.precision)}",
                figures,
            )
        meta["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["seconds"] = {k: round(v, 2) for k, v in {**timings, "total_s": time.perf_counter() - started}.items()}
        write_json(tmp / EXPORT_FILE, meta)
    log.info("exported %s → %s (%s, %s)", cfg.scorer, cfg.out, cfg.precision, meta["parity"]["figures"])
    return ExportResult(Path(cfg.out), meta)


def _trace(source: Scorer | CrossFitScorer, folder: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Export the source's towers as fp32 graphs into ``folder``; return the layout for ``export.json``."""
    crossfit = isinstance(source, CrossFitScorer) and not isinstance(source, Scorer)
    if crossfit:
        pair, towers, extra = _export_crossfit(source, folder, cfg)
    else:
        pair = towers_of(source)
        towers = [{"image": "image.onnx", "text": "text.onnx"}]
        for kind, tower in (("image", pair.image), ("text", pair.text)):
            export_tower(tower, folder / towers[0][kind], cfg.opset)
        extra = {}
    pair.save_processing(folder)
    return {
        "family": pair.family,
        "embed_dim": pair.embed_dim,
        "context_length": pair.context_length,
        "text_sequence": pair.text_sequence,
        "inputs": {"image": pair.image.input_names, "text": pair.text.input_names},
        "image_shape": list(pair.image_shape),
        "processing": pair.processing,
        "towers": towers,
        "crossfit": extra or None,
    }


def _copy_fp32_export(folder: Path, target: Path, checksum: str) -> dict[str, Any]:
    """Copy a verified fp32 export of the same weights into ``target``; return its layout."""
    meta = read_export_meta(folder)
    verify_files(folder, meta)
    if meta["precision"] != "fp32":
        raise ValueError(f"{folder} is a {meta['precision']} export; convert from an fp32 export")
    if meta["source"]["checksum"] != checksum:
        raise ValueError(f"{folder} was exported from other weights ({meta['source']['scorer_id']}); export afresh")
    for name in meta["files"]:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, target / name)
    keys = ("family", "embed_dim", "context_length", "text_sequence", "inputs", "image_shape", "processing", "towers")
    layout = {k: meta[k] for k in keys}
    return {**layout, "crossfit": meta.get("crossfit"), "opset": meta["opset"], "exporter": meta["exporter"]}


def source_checksum(scorer: Scorer | CrossFitScorer) -> str:
    """``sha256:<hex>`` over the source's weights (every fold's), whatever file format they came from."""
    digest = hashlib.sha256()
    crossfit = isinstance(scorer, CrossFitScorer) and not isinstance(scorer, Scorer)
    models = [scorer.fold_model(k).model for k in range(scorer.n_folds)] if crossfit else [scorer.model]
    for model in models:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def _export_crossfit(source: Any, folder: Path, cfg: ExportConfig) -> tuple[TowerPair, list[dict[str, str]], dict]:
    """Trace fold 0 once; the other folds reuse its fp32 graphs with their own weights."""
    first = source.fold_model(0)
    pair = towers_of(first, crossfit_source=source)
    staging = folder / ".fp32"
    staging.mkdir()
    for kind, tower in (("image", pair.image), ("text", pair.text)):
        export_tower(tower, staging / f"{kind}.onnx", cfg.opset)
    towers = []
    for fold in range(source.n_folds):
        state = source.fold_model(fold).model.state_dict()
        names = {"image": f"fold-{fold}/image.onnx", "text": f"fold-{fold}/text.onnx"}
        (folder / f"fold-{fold}").mkdir()
        for kind in ("image", "text"):
            target = folder / names[kind]
            swap_weights(staging / f"{kind}.onnx", state, target)
        towers.append(names)
    shutil.rmtree(staging)

    from dldc.iel.indomain_arch import FOLDS_FILE, TEXTS_FILE

    shutil.copy2(Path(source.path) / FOLDS_FILE, folder / FOLDS_FILE)
    extra: dict[str, Any] = {"folds": source.n_folds, "seed": source.seed, "folds_file": FOLDS_FILE}
    if getattr(source, "trained_by", None):  # text folds: which fold models trained on each text
        shutil.copy2(Path(source.path) / TEXTS_FILE, folder / TEXTS_FILE)
        extra["texts_file"] = TEXTS_FILE
    if getattr(source, "has_scene_head", False):
        scene_files = []
        for fold in range(source.n_folds):
            name = f"fold-{fold}.scene.safetensors"
            source.fold_model(fold).scene_model.save(folder / name)
            scene_files.append(name)
        extra.update(scene_head=True, scene_files=scene_files)
    return pair, towers, extra


def _profiles(layout: dict[str, Any], cfg: ExportConfig) -> dict[str, dict[str, dict[str, list[int]]]]:
    """TensorRT optimisation profiles: batch 1..max_batch (opt ``opt_batch``); text 2..context tokens."""
    shape = layout["image_shape"]
    image = {
        name: {"min": [1, *shape], "opt": [cfg.opt_batch, *shape], "max": [cfg.max_batch, *shape]}
        for name in layout["inputs"]["image"]
    }
    context = layout["context_length"]
    low, typical = (2, min(32, context)) if layout["text_sequence"] == "dynamic" else (context, context)
    text = {
        name: {"min": [1, low], "opt": [cfg.opt_batch, typical], "max": [cfg.max_batch, context]}
        for name in layout["inputs"]["text"]
    }
    return {"image": image, "text": text}


def _set_fp32(scorer: Any) -> None:
    """The export and the gate's reference are fp32: drop any autocast precision the source was given."""
    models = [scorer.fold_model(k) for k in range(scorer.n_folds)] if hasattr(scorer, "n_folds") else [scorer]
    for model in models:
        if getattr(model, "precision", "fp32") != "fp32":
            model.precision = "fp32"


def _provider(candidate: Any) -> str:
    scorer = candidate.fold_model(0) if hasattr(candidate, "fold_model") else candidate
    return scorer.provider


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}


def _hint(precision: str) -> str:
    if precision == "int8":
        return (
            "int8 is opt-in: its noise reorders near-tied pairs, which a scorer with narrowly spread scores "
            "cannot absorb. Use fp32 on a CPU (the default) or fp16 on a GPU; or try export.int8_per_channel=true "
            "or quantizing fewer op types (export.int8_ops)."
        )
    if precision == "fp16":
        return "fp16 gates run on the export's provider; check it on the GPU it will run on, or export fp32."
    return "An fp32 export should match to ~1e-6: this points at an exporter problem; please report it."
