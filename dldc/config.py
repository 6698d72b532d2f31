"""Typed configuration: ``params.yaml`` (DVC's params file) parsed into pydantic models.

Resolution order, later wins:

1. the code defaults below, which *are* the ``demo`` profile (CPU, offline, SynthRS);
2. the chosen profile's overrides (``dldc/profiles/<name>.yaml``, :func:`list_profiles`; ``profile: paper``
   selects GPU settings);
3. the values written in ``params.yaml``;
4. ``-S key=value`` overrides on the command line (the syntax of ``dvc exp run -S``);
5. explicit command flags such as ``dldc synth --seed 3``.

Unknown keys and bad values fail with a :class:`ConfigError` naming the dotted key, e.g.
``ingest.near_duplicate_max_distance: Input should be less than or equal to 32``.

Example:
    >>> cfg = load_config(None, overrides=["synth.seed=7"])
    >>> cfg.profile, cfg.synth.seed
    ('demo', 7)
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

DEFAULT_PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and what to do."""


class _Section(BaseModel):
    # Frozen and strict about unknown keys: a typo in params.yaml must fail, not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingConfig(_Section):
    """Where MLflow records runs.

    Attributes:
        enabled: log to MLflow at all (turn off for quick local experiments).
        uri: MLflow tracking URI; ``None`` means ``$MLFLOW_TRACKING_URI`` when set, else
            ``sqlite:///mlflow.db`` (a SQLite file in the working directory).
        experiment: experiment name that every stage logs into.
        artifact_location: where a newly created experiment stores artifacts; ``None`` puts
            ``mlartifacts/`` beside a SQLite store (or MLflow's default otherwise).
        allow_local_store: track into a SQLite file or a local folder even inside a Kubernetes pod,
            where it vanishes with the pod (off: a stage there stops and says how to point it at a server).
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "dldc"
    artifact_location: str | None = None
    allow_local_store: bool = False

    def resolved_uri(self) -> str:
        """The tracking URI in force (see ``uri``)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    def is_local_store(self) -> bool:
        """Whether the URI in force is a file on this machine (SQLite or a folder), not a server.

        Example:
            >>> [TrackingConfig(uri=uri).is_local_store() for uri in ("sqlite:///mlflow.db", "./mlruns")]
            [True, True]
            >>> [TrackingConfig(uri=uri).is_local_store() for uri in ("https://mlflow.example.com", "databricks")]
            [False, False]
        """
        uri = self.resolved_uri()
        if uri.startswith(("sqlite:", "file:")):
            return True
        # A bare path is a folder store; bare names like `databricks` are servers.
        return "://" not in uri and uri.split(":")[0] not in ("databricks", "databricks-uc", "uc")


class SynthConfig(_Section):
    """SynthRS, the embedded synthetic dataset (``dldc synth``)."""

    out: str = "data/synthrs"
    n_images: int = Field(400, ge=1)
    size: int = Field(64, ge=16, le=2048)
    noise_rate: float = Field(0.3, ge=0.0, le=1.0)
    noise_rate_by_scene: dict[str, float] = Field(default_factory=dict)
    captions_per_image: int = Field(5, ge=1, le=20)
    seed: int = 0
    scenes: list[str] | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Kinds of caption noise (dldc.data.synthrs.NOISE_KINDS); null = all four.
    noise_kinds: list[Literal["other_scene", "generic", "truncated", "wrong_layout"]] | None = None

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError(f"split_ratios must be 3 non-negative numbers summing to 1, got {self.split_ratios}")
        for scene, rate in self.noise_rate_by_scene.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"noise_rate_by_scene.{scene} must be in [0, 1], got {rate}")
        kinds = self.noise_kinds
        if kinds is not None and (not kinds or len(set(kinds)) < len(kinds)):
            raise ValueError(f"noise_kinds must list distinct kinds (at least one) or be null, got {self.noise_kinds}")
        return self


class IngestConfig(_Section):
    """Reading a dataset into a manifest (``dldc ingest``).

    Attributes:
        format: ``karpathy`` (RSICD/UCM/Sydney JSON) or ``folder`` (``<scene>/<image>`` +
            ``captions.jsonl`` or ``captions.csv``).
        root: dataset root; every image path must stay inside it. Or a URL that fsspec reads
            (``s3://``, ``gs://`` with the s3 / gs extras; ``file://``), fetched into ``<out>/dataset``.
        copy_dataset: copy a local root into ``<out>/dataset`` (hard links where possible) and read
            it there, so the output folder carries its images (Kubeflow: later pods get only the
            manifest artifact). See :mod:`dldc.data.source`.
        out: output directory for ``manifest.parquet``, ``rejects.parquet``, ``ingest.json``.
        annotations: Karpathy JSON file relative to ``root``; ``None`` finds the single
            ``dataset*.json`` in ``root``.
        image_dir: folder (relative to ``root``) that Karpathy file names live in; ``None``
            uses ``images/`` when it exists, else ``root`` itself.
        scenes: folder of ``<Scene>.txt`` class lists; ``None`` finds ``txtclasses_*`` in root.
        scene_source: ``auto`` (class lists if found, else file-name prefix), ``txtclasses``,
            ``prefix`` (``airport_12.jpg`` → ``airport``), or ``none`` (all ``unknown``).
        split_ratios: train/val/test shares for folder datasets that carry no split column;
            the split is then a stable hash of the image path.
        max_pixels: decompression-bomb guard; larger images are rejected as ``too_large``.
        min_side: images with a side shorter than this are rejected as ``too_small``.
        near_duplicate_max_distance: perceptual-hash Hamming distance (of 64 bits, imagehash's
            pHash) at or below which two images count as near-duplicates; ``-1`` turns the
            check off.
        near_duplicate_min_texture: RMS grey levels of the 32×32 thumbnail below which an image
            is low-texture: its hash bits are noise, so it is compared by colours instead.
        near_duplicate_colour_tolerance: grey levels within which two low-texture images' 4×4
            colour thumbnails must agree, cell by cell, to count as near-duplicates.
        workers: processes that decode images; ``0`` picks the number of CPU cores.
    """

    format: Literal["karpathy", "folder"] = "karpathy"
    root: str = "data/synthrs"
    copy_dataset: bool = False
    out: str = "data/ingest"
    annotations: str | None = None
    image_dir: str | None = None
    scenes: str | None = None
    scene_source: Literal["auto", "txtclasses", "prefix", "none"] = "auto"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_pixels: int = Field(64_000_000, ge=1)
    min_side: int = Field(8, ge=1)
    near_duplicate_max_distance: int = Field(6, ge=-1, le=32)
    near_duplicate_min_texture: float = Field(1.0, ge=0.0)
    near_duplicate_colour_tolerance: int = Field(2, ge=0, le=255)
    workers: int = Field(0, ge=0)


class IndomainConfig(_Section):
    """The in-domain scorer, trained with K-fold cross-fitting (``dldc train-scorer``).

    Attributes:
        manifest: the manifest to train on (all splits: cross-fitting scores every pair
            with a model that never saw it).
        out: folder for the fold models, fold assignment and training report.
        architecture: an open_clip-style JSON model config: a file name in
            ``dldc/iel/configs`` (without ``.json``) or a path.
        folds: K; each image (with all its captions) is held out in exactly one fold.
        epochs, batch_size, lr, weight_decay, warmup_steps: the contrastive training loop.
        seed: seeds the fold assignment, initialisation and batches.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        scene_head: also fit, per fold, a naive-Bayes caption → scene model
            (:mod:`dldc.iel.scene_text`); scoring then reports ``P(image's scene | caption)``
            as ``indomain_scenefit`` and fuses it with the cosine. Needs scene labels.
        scene_alpha: its Laplace smoothing count.
        augment: training views of the images: ``dihedral`` (random flips and 90° rotations: a
            top-down tile has no "up"; best for scene-level noise) or ``none`` (the tower can then
            learn positions, for captions that name them: "a lake at the top left").
        fold_groups: ``text`` (default): images that share a caption text (as the tokenizer
            normalises it) share a fold, and where such a group is too large to keep whole,
            training of fold k drops the pairs whose text occurs in fold k — no fold model trains
            on a text it scores (:func:`dldc.iel.folds.group_folds`). ``image``: folds by image
            only (the earlier behaviour; a repeated text leaks into the models that score it).
    """

    manifest: str = "data/ingest/manifest.parquet"
    out: str = "data/scorer"
    architecture: str = "indomain-tiny"
    folds: int = Field(5, ge=2, le=20)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0
    device: str = "auto"
    scene_head: bool = True
    scene_alpha: float = Field(1.0, gt=0)
    augment: Literal["dihedral", "none"] = "dihedral"
    fold_groups: Literal["text", "image"] = "text"


class ScoreConfig(_Section):
    """Scoring every pair with one or more scorers (``dldc score``).

    Attributes:
        manifest: the manifest to score.
        out: folder for ``scores.parquet``, ``score.json``, shards and the embedding store.
        scorers: scorer specs: ``indomain:DIR``, ``open_clip:ARCH[:TAG_OR_CHECKPOINT]``,
            ``hf:HUB_ID_OR_DIR``, or ``onnx:DIR`` (an export of ``dldc export-scorer``, run with ONNX
            Runtime: ``onnx:data/scorer-onnx`` replaces ``indomain:data/scorer`` and keeps its columns).
        fusion: ``rank`` (mean of within-scene percentile ranks) or ``zscore`` (mean of
            within-scene z-scores), see :mod:`dldc.iel.fuse`.
        disagreement: flag a pair when two scorers' within-scene percentile ranks differ by
            more than this (a re-caption candidate rather than a drop).
        batch_size: images or texts per model call (halved and retried on out-of-memory).
        shard_size: pairs per output shard (the unit of resume).
        workers: image-decoding worker processes (0 = decode in the main process).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (bf16/fp16 autocast on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        cache: embedding store folder; ``None`` = ``<out>/embeddings``.
        trust_remote_code: allow Hugging Face models with custom code (off unless you say so).
    """

    manifest: str = "data/ingest/manifest.parquet"
    out: str = "data/scores"
    scorers: list[str] = Field(default_factory=lambda: ["indomain:data/scorer"], min_length=1)
    fusion: Literal["rank", "zscore"] = "rank"
    disagreement: float = Field(0.5, gt=0.0, le=1.0)
    batch_size: int = Field(64, ge=1)
    shard_size: int = Field(2048, ge=1)
    workers: int = Field(0, ge=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    cache: str | None = None
    trust_remote_code: bool = False


_METRIC_LABEL = r"^[A-Za-z0-9_.]+$"


def _check_labels(field: str, mapping: dict[str, str]) -> None:
    import re

    for label, spec in mapping.items():
        if not re.match(_METRIC_LABEL, label):
            raise ValueError(f"{field}: label {label!r} must use letters, digits, '_' or '.' (it names a metric)")
        if not spec.strip():
            raise ValueError(f"{field}.{label}: empty scorer spec")


class EvaluateConfig(_Section):
    """Generation quality against the real test images (``dldc evaluate``).

    Attributes:
        generations: folders written by ``dldc generate`` (each arm in exactly one of them).
        manifest: the manifest the prompts came from; the referenced images are the real set.
        out: folder for ``results.json``, ``results.md``, ``metrics.parquet``, ``per_image.parquet``,
            ``bootstrap.parquet`` and ``evaluate.json`` (the DVC metrics).
        split: the split every referenced real image must belong to.
        base_arm: the arm (the pretrained model) that relative changes are measured against.
        fid: compute FID and KID with the Inception-2015-12-05 network (needs ``inception_weights``).
        inception_weights: the staged torch-fidelity / pytorch-fid weights file (never downloaded).
        feature_scorers: ``{label: scorer spec}``; each image tower gives ``FD-<label>`` and
            ``KD-<label>`` (Fréchet / kernel distance in that space; never called FID).
        clip_scorers: ``{label: scorer spec}``; each gives ``CLIPScore-<label>`` (100·max(cos, 0))
            and ``cos-<label>`` (raw cosine) of generated images against their prompts.
        real_resize: PIL filter that brings real images to the generated resolution (after a
            centre crop to its aspect ratio).
        kid_subsets: random subsets KID is averaged over.
        kid_subset_size: images per set and subset (capped at the smaller set; recorded).
        bootstrap: resamples for the percentile intervals (0: no intervals).
        ci: the intervals' coverage.
        seed: seeds the bootstrap and KID subsets.
        per_scene: add a per-scene breakdown of every metric.
        batch_size: images per model call.
        workers: image-decoding threads.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: IEL scorers' precision: ``fp32`` (default: distances are sensitive to feature
            rounding), or ``auto`` / ``fp16`` / ``bf16`` autocast on CUDA.
        trust_remote_code: allow Hugging Face scorers with custom code.
    """

    generations: list[str] = Field(default_factory=lambda: ["data/generate"], min_length=1)
    manifest: str = "data/ingest/manifest.parquet"
    out: str = "data/evaluate"
    split: str = "test"
    base_arm: str = "base"
    fid: bool = False
    inception_weights: str = "models/pt_inception-2015-12-05-6726825d.pth"
    feature_scorers: dict[str, str] = Field(default_factory=lambda: {"indomain": "indomain:data/scorer"})
    clip_scorers: dict[str, str] = Field(default_factory=lambda: {"indomain": "indomain:data/scorer"})
    real_resize: Literal["bicubic", "bilinear", "lanczos"] = "bicubic"
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    bootstrap: int = Field(200, ge=0)
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0
    per_scene: bool = True
    batch_size: int = Field(32, ge=1)
    workers: int = Field(4, ge=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        _check_labels("feature_scorers", self.feature_scorers)
        _check_labels("clip_scorers", self.clip_scorers)
        if not (self.fid or self.feature_scorers or self.clip_scorers):
            raise ValueError("nothing to compute: enable fid or give feature_scorers / clip_scorers")
        return self


class RegistryConfig(_Section):
    """The MLflow model registry that fine-tuned adapters are registered in.

    Attributes:
        model_name: registered model name; every adapter is a version of it.
        alias: the alias ``dldc promote`` moves to a better version.
        challenger_alias: the alias every newly evaluated candidate gets, whatever the decision (the
            version to look at next; ``champion`` moves only through the gate).
        adapter_files: glob patterns (relative to the adapter folder, top level) of the files
            registered; checkpoints and optimizer states in sub-folders are left out.
    """

    model_name: str = "dldc-t2i-lora"
    alias: str = "champion"
    challenger_alias: str = "challenger"
    adapter_files: list[str] = Field(default_factory=lambda: ["*.safetensors", "*.json"], min_length=1)


class PromoteCriterion(_Section):
    """One metric the candidate must beat the champion on.

    Attributes:
        metric: a metric of the evaluation (``FID``, ``FD-indomain``, ``CLIPScore-clip``, ...).
        margin: how much better it must be: a fraction of the champion's value when
            ``relative`` (0.02 = 2% better), else in the metric's units; 0 = strictly better.
        relative: whether ``margin`` is relative.
        direction: ``auto`` (distances ``FID``/``KID``/``FD-*``/``KD-*`` lower is better, scores
            higher is better), ``lower`` or ``higher``.
    """

    metric: str
    margin: float = Field(0.0, ge=0.0)
    relative: bool = True
    direction: Literal["auto", "lower", "higher"] = "auto"


class PromoteConfig(_Section):
    """Registering the candidate adapter and moving the champion alias (``dldc promote``).

    Attributes:
        evaluation: the ``dldc evaluate`` output folder with the candidate's metrics.
        out: folder for ``decision.json``.
        candidate_arm: the evaluated arm whose adapter is the candidate.
        adapter: the candidate's adapter folder; ``None`` takes the arm's ``adapter`` column.
        base: the base the adapter applies to, for the registered model: a hub id (``id@revision``
            pins it) or a ``save_pretrained`` folder here (shipped inside the model); ``None``: the
            base the adapter's ``finetune.json`` names, else the evaluation's
            (:mod:`dldc.registry.adapter_model`).
        data_manifest: the manifest the candidate was trained on (its data version: sha256, DVC
            and git revisions); ``None`` reads it from the adapter folder's metadata when there,
            else records none.
        criteria: every one must pass for the candidate to become champion.
        scene: the scene the criteria look at (``all`` = the whole test split).
        require_same_protocol: only compare with a champion whose metrics were measured under the
            same protocol (same real images, prompts, seeds, resolution and extractors), or that
            is itself an arm of this evaluation; otherwise do not promote and say why.
        baselines: arms of the same evaluation the candidate must also beat on every criterion
            metric, with the paired-bootstrap interval of the difference clear of zero (arms the
            evaluation lacks are skipped, and the decision says so); ``[]``: the champion only.
        scene_tolerance: and no scene may be worse than a baseline by more than this fraction of the
            baseline's value (``null``: scenes not checked).
    """

    evaluation: str = "data/evaluate"
    out: str = "data/promote"
    candidate_arm: str = "clean"
    adapter: str | None = None
    base: str | None = None
    data_manifest: str | None = None
    criteria: list[PromoteCriterion] = Field(
        default_factory=lambda: [
            PromoteCriterion(metric="FD-indomain"),
            PromoteCriterion(metric="CLIPScore-indomain"),
        ],
        min_length=1,
    )
    scene: str = "all"
    require_same_protocol: bool = True
    baselines: list[str] = Field(default_factory=lambda: ["raw", "global"])
    scene_tolerance: float | None = Field(0.25, ge=0.0)


# Versioned layout-description prompts of the EGL (``caption.prompts``): id -> template with the
# {scene} and {caption} fields. Change a template's text only under a new id, so that the lineage
# in captions.parquet keeps meaning what it says.
DEFAULT_CAPTION_PROMPTS: dict[str, str] = {
    "layout-v1": (
        "This is a remote sensing image of a {scene} scene. Its current caption is: \"{caption}\". "
        "Write a new caption that describes the layout: the main scene, the salient objects and how many "
        "there are, where they are on a 3x3 grid (top left, top, top right, left, center, right, bottom left, "
        "bottom, bottom right), how they relate to each other, and the land cover. Keep only what the image "
        "shows. At most 50 words, plain sentences, no lists. Answer with the caption only."
    ),
    "layout-v1-brief": (
        "Describe this aerial image of a {scene} scene in two short sentences: the main objects, how many "
        "there are and where they are (top left, top, top right, left, center, right, bottom left, bottom, "
        "bottom right). The old caption \"{caption}\" may be wrong. Answer with the description only."
    ),
}


PROMPT_FIELDS = ("scene", "caption")
_PLACEHOLDER = re.compile(r"{(\w*)}")


def check_template(prompt_id: str, template: str) -> None:
    """Raise ``ValueError`` unless ``template`` only uses the ``{scene}`` and ``{caption}`` fields.

    Example:
        >>> check_template("v1", "Describe the {scene}.")
        >>> check_template("v1", "Describe {place}.")
        Traceback (most recent call last):
        ...
        ValueError: prompt 'v1' uses unknown field(s) ['place']; allowed: {scene}, {caption} (write {{ }} for braces)
    """
    unknown = sorted(
        {name for name in _PLACEHOLDER.findall(template.replace("{{", "").replace("}}", ""))} - set(PROMPT_FIELDS)
    )
    if unknown:
        raise ValueError(
            f"prompt {prompt_id!r} uses unknown field(s) {unknown}; allowed: {{scene}}, {{caption}} "
            "(write {{ }} for braces)"
        )


class CaptionConfig(_Section):
    """The EGL loop: regenerate captions of low-scoring pairs and keep IEL-better ones (``dldc caption``).

    Attributes:
        manifest: the manifest whose captions are repaired.
        scores: round-0 scores (``dldc score``'s ``scores.parquet``); used when its ``score.json``
            names the same scorers and it covers the manifest, else round 0 is scored here.
        out: folder for ``manifest.parquet`` (with ``caption_source``), ``captions.parquet`` (every
            candidate with its lineage), ``scores.parquet``, ``caption.json`` and ``rounds/``.
        backends: captioner specs, each asked in every round: ``hf:HUB_ID[@REV]`` / ``hf:DIR`` (a
            vision-language model), ``mask2text[:TABLE]`` (describe the segmentation mask;
            tables ``synthrs``, ``dubai-seg`` or a JSON path), ``retrieval[:INDOMAIN_DIR]`` (captions
            of the nearest same-scene images by the in-domain scorer's image embeddings).
        scorers: IEL scorer specs that judge candidates; ``None`` = ``score.scorers``.
        rounds: K, the most regeneration rounds; the loop also stops when no pair improves.
        threshold: a pair is regenerated while its fused score is below this within-scene
            percentile of the round-0 fused scores (0.2 = its scene's lowest fifth).
        threshold_by_scene: per-scene overrides of ``threshold``.
        min_gain: a candidate replaces the current caption only if its fused score is higher by
            more than this (fused units: within-scene percentile, or z-score with ``score.fusion: zscore``).
            The default 0.02 keeps a caption that a candidate beats by a hair (SynthRS,
            ``benchmarks/egl_repair.py``: clean pairs replaced 5.3% → 4.5%, noisy repaired 73.6% → 72.4%).
        prompts: prompt id -> template (``{scene}``, ``{caption}``); round r uses the r-th, cycling.
            mask2text reads ids containing ``brief`` as its brief variant.
        temperature: round 1 decodes greedily; later rounds sample at this temperature.
        seed: seeds sampling (round r uses ``seed + r``).
        max_new_tokens: generation length limit of VLMs.
        token_budget: candidates are cut at a sentence boundary to at most this many tokens of the
            scorers' tokenizers (and never beyond the smallest scorer context).
        batch_size: images per VLM call (halved and retried on CUDA out-of-memory).
        shard_size: pairs per generation shard (the unit of resume).
        device: ``auto``, ``cpu`` or ``cuda[:N]`` for VLMs and scorers.
        precision: ``auto`` (bf16 on CUDA when supported, else fp16; fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        trust_remote_code: allow VLMs with custom code from their repository (off unless you say so).
        cache: embedding store; ``None`` = ``score.cache``, else ``<score.out>/embeddings``.
        mask_from, mask_to, mask_suffix: an image's mask path is its path with the last
            ``mask_from`` folder replaced by ``mask_to`` and the suffix by ``mask_suffix``
            (``images/a.jpg`` -> ``masks/a.png``).
        retrieval_neighbours: nearest same-scene images whose captions retrieval may propose.
        layout_check: class table (``synthrs``, ``dubai-seg`` or a JSON path) of the masks that
            check the places captions name (:mod:`dldc.egl.layout_check`): a caption the mask
            contradicts is regenerated whatever its score, and never replaces one it does not
            contradict; ``null``: off (datasets without masks, e.g. RSICD).
        layout_min_share: the least share of a grid cell an object must cover to be "there".
    """

    manifest: str = "data/ingest/manifest.parquet"
    scores: str | None = "data/scores/scores.parquet"
    out: str = "data/captions"
    backends: list[str] = Field(default_factory=lambda: ["mask2text:synthrs", "retrieval"], min_length=1)
    scorers: list[str] | None = None
    rounds: int = Field(3, ge=0, le=50)
    threshold: float = Field(0.25, ge=0.0, le=1.0)
    threshold_by_scene: dict[str, float] = Field(default_factory=dict)
    min_gain: float = Field(0.02, ge=0.0)
    prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CAPTION_PROMPTS), min_length=1)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    seed: int = 0
    max_new_tokens: int = Field(96, ge=1, le=1024)
    token_budget: int = Field(77, ge=8)
    batch_size: int = Field(8, ge=1)
    shard_size: int = Field(256, ge=1)
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    trust_remote_code: bool = False
    cache: str | None = None
    mask_from: str = "images"
    mask_to: str = "masks"
    mask_suffix: str = ".png"
    retrieval_neighbours: int = Field(16, ge=1)
    layout_check: str | None = "synthrs"
    layout_min_share: float = Field(0.02, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> CaptionConfig:
        for prompt_id, template in self.prompts.items():
            check_template(prompt_id, template)
        for scene, value in self.threshold_by_scene.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold_by_scene.{scene} must be in [0, 1], got {value}")
        return self


class ExportConfig(_Section):
    """Exporting an IEL scorer to ONNX behind a parity gate (``dldc export-scorer``, :mod:`dldc.export`).

    Attributes:
        scorer: the scorer spec to export (any ``score.scorers`` form except ``onnx:``).
        out: the export folder; use it as ``onnx:<out>`` in ``score.scorers``.
        precision: ``fp32`` (any provider), ``fp16`` (GPU: TensorRT / CUDA providers; fp32 I/O kept)
            or ``int8`` (dynamic quantization, CPU provider; opt-in: it passes its parity gate only for
            scorers whose scores are spread widely enough for its noise, see the README).
        opset: ONNX opset of the graphs (the dynamo exporter needs >= 18).
        calibration_manifest: manifest the parity gate samples its pairs from.
        calibration_pairs: pairs in the calibration sample; the whole manifest when it has fewer (then
            a census: the flip rate is exact for it). A sample of a larger manifest must hold >= 1,530
            pairs for the flip-rate gate to be able to pass at 0.5% (:mod:`dldc.export.parity`).
        seed: seed of the calibration sample.
        min_cosine_fp32, min_cosine_fp16, min_cosine_int8: least cosine between the source's and
            the export's embedding of any calibration image or caption, per precision.
        min_spearman: least Spearman correlation of the calibration pairs' scores.
        max_flip_rate: most share of pairs whose kept/dropped decision may change when the
            ``drop_ratio`` lowest-scoring pairs of each scene are dropped; the gate passes when the
            upper end of the flip rate's 95% interval is at most this.
        drop_ratio: per-scene share of pairs dropped for the flip-rate gate.
        int8_ops: ONNX op types quantized for ``int8``.
        int8_per_channel: per-output-channel weight scales for ``int8`` (measured best parity).
        int8_reduce_range: 7-bit weights for ``int8`` (avoids u8×s8 saturation on AVX2 CPUs without VNNI).
        int8_weight_type: ``quint8`` (u8 weights, no AVX2 saturation; measured best) or ``qint8`` for ``int8``.
        batch_size: images or texts per model call during the gate.
        opt_batch, max_batch: TensorRT optimisation profile (dynamic batch 1..max_batch, tuned for opt_batch).
        device: where the source model and the gate run (``auto``, ``cpu``, ``cuda[:N]``).
        registered_model: MLflow registered-model name the export is registered under (``null``:
            artifacts only).
        alias: MLflow alias set on the new version (``dldc fetch-scorer NAME@ALIAS`` fetches it).
    """

    scorer: str = "indomain:data/scorer"
    out: str = "data/scorer-onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    opset: int = Field(18, ge=18, le=23)
    calibration_manifest: str = "data/ingest/manifest.parquet"
    calibration_pairs: int = Field(4096, ge=2)
    seed: int = 0
    min_cosine_fp32: float = Field(0.9999, ge=-1.0, le=1.0)
    min_cosine_fp16: float = Field(0.999, ge=-1.0, le=1.0)
    min_cosine_int8: float = Field(0.99, ge=-1.0, le=1.0)
    min_spearman: float = Field(0.995, ge=-1.0, le=1.0)
    max_flip_rate: float = Field(0.005, ge=0.0, le=1.0)
    drop_ratio: float = Field(0.2, gt=0.0, lt=1.0)
    int8_ops: list[str] = Field(default_factory=lambda: ["MatMul", "Gemm"], min_length=1)
    int8_per_channel: bool = True
    int8_reduce_range: bool = False
    int8_weight_type: Literal["qint8", "quint8"] = "quint8"
    batch_size: int = Field(64, ge=1)
    opt_batch: int = Field(64, ge=1)
    max_batch: int = Field(256, ge=1)
    device: str = "auto"
    registered_model: str | None = "dldc-iel-scorer"
    alias: str | None = "exported"


class BaseConfig(_Section):
    """The demo's tiny Stable Diffusion, trained from scratch on a SynthRS pretraining split (``dldc build-base``).

    Only the demo profile builds a base; the paper profile fine-tunes a hub model
    (``finetune.base``). See :mod:`dldc.t2i.base` for the recipe.

    Attributes:
        out: the pipeline folder (``save_pretrained`` layout) every later stage loads like a hub id.
        data: folder for the pretraining split (``synthrs/`` and its ``ingest/`` manifest).
        n_images, data_seed, noise_rate: SynthRS parameters of the pretraining split; its seed
            differs from ``synth.seed`` so the base never sees the fine-tuning images.
        caption_style: ``scene`` (scene-level alt texts such as "a lake seen from above": a generic
            pretrained model that knows the scenes but not the layout descriptions fine-tuning teaches)
            or ``synthrs`` (SynthRS's own layout captions).
        resolution: image side in pixels (SynthRS's size).
        vae_channels: AutoencoderKL block widths; 3 blocks = 4x downsampling (64 px -> 16x16 latents).
        latent_channels: latent channels (SD: 4).
        unet_channels, unet_layers, attention_head_dim: the UNet.
        unet_cross_attention: per UNet block, whether it has cross-attention (the mid block always
            has); attention only at the coarse level is far cheaper on a CPU.
        unet_text_time_embedding: also add an attention-pooled text summary to the timestep embedding
            (``addition_embed_type="text"``), so every ResNet block sees the prompt.
        text_width, text_layers, text_heads: the CLIP text encoder (width = cross-attention dim).
        norm_groups: GroupNorm groups of the VAE and UNet.
        vae_steps, vae_batch, vae_crop, vae_lr, vae_kl_weight: the autoencoder's short training
            on random crops (fully convolutional: crops teach the same textures, cheaper).
        text_steps, text_batch, text_lr: the text encoder's contrastive pretraining (CLIP-style,
            against a small CNN over the VAE latents); it is then frozen, as SD's CLIP is.
        steps, batch_size, lr, warmup_steps: the UNet's training.
        caption_dropout: share of captions replaced by "" (for classifier-free guidance).
        snr_gamma: Min-SNR-gamma loss weighting (``null``: plain MSE).
        ema_decay: the saved UNet is the exponential moving average of its weights (``null``: the last).
        sample_scheduler: the sampler saved with the pipeline.
        seed: seeds initialisation, batches and noise.
        check_scorer: in-domain scorer folder for the scene check (``null``: skip it).
        check_images_per_scene, check_steps, check_guidance: the scene check's generation.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: torch CPU threads (0: torch's default).
    """

    out: str = "data/base/model"
    data: str = "data/base"
    n_images: int = Field(1000, ge=10)
    data_seed: int = 1000
    noise_rate: float = Field(0.0, ge=0.0, le=1.0)
    caption_style: Literal["scene", "synthrs"] = "scene"
    resolution: int = Field(64, ge=8)
    vae_channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    latent_channels: int = Field(4, ge=1)
    unet_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1)
    unet_cross_attention: list[bool] = Field(default_factory=lambda: [False, False, True], min_length=1)
    unet_layers: int = Field(1, ge=1)
    unet_text_time_embedding: bool = True
    attention_head_dim: int = Field(8, ge=1)
    text_width: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    norm_groups: int = Field(8, ge=1)
    vae_steps: int = Field(400, ge=1)
    vae_batch: int = Field(16, ge=1)
    vae_crop: int = Field(32, ge=8)
    vae_lr: float = Field(2e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    text_steps: int = Field(200, ge=1)
    text_batch: int = Field(64, ge=2)
    text_lr: float = Field(2e-3, gt=0)
    steps: int = Field(800, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    snr_gamma: float | None = Field(5.0, gt=0)
    ema_decay: float | None = Field(0.995, gt=0.0, lt=1.0)
    sample_scheduler: Literal["dpmsolver", "ddim", "euler", "pndm"] = "dpmsolver"
    seed: int = 0
    check_scorer: str | None = "data/scorer"
    check_images_per_scene: int = Field(10, ge=1)
    check_steps: int = Field(20, ge=1)
    check_guidance: float = Field(4.0, ge=0.0)
    device: str = "auto"
    threads: int = Field(0, ge=0)


_LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class FinetuneConfig(_Section):
    """LoRA fine-tuning of a Stable Diffusion base on a manifest (``dldc finetune``, :mod:`dldc.t2i.finetune`).

    Attributes:
        base: hub id or ``save_pretrained`` folder of the base pipeline.
        revision: hub revision of ``base`` (ignored for folders).
        manifest: the (cleaned) manifest to train on.
        splits: manifest splits to train on (the test split is never trained on).
        out: the adapter folder: ``pytorch_lora_weights.safetensors`` (diffusers'
            ``load_lora_weights`` format), ``finetune.json``, ``samples.png``, ``checkpoints/``.
        resolution: training side in pixels (centre crop + bicubic resize).
        rank, alpha, dropout: LoRA rank r, scaling alpha (update scaled by alpha / r) and dropout.
        target_modules: UNet modules that get LoRA (its attention projections by default).
        text_encoder_lora: also train LoRA on the text encoder's ``text_target_modules`` (demo: on, since
            the demo base's text encoder never saw the layout vocabulary; paper: off, diffusers' default).
        text_target_modules: text-encoder modules that get LoRA when ``text_encoder_lora``.
        steps: optimizer steps.
        batch_size: pairs per micro-batch; an optimizer step sees ``batch_size * grad_accum``.
        grad_accum: micro-batches accumulated per optimizer step.
        lr, warmup_steps, weight_decay, max_grad_norm: AdamW, linear warmup + cosine decay, clipping.
        noise_offset: offset noise strength (0: off); helps very dark / bright images.
        snr_gamma: Min-SNR-gamma loss weighting (``null``: plain MSE).
        precision: ``auto`` (bf16 on CUDA when supported, else fp16; fp32 on CPU), ``fp32``,
            ``fp16`` (with a gradient scaler) or ``bf16``. Frozen weights are stored in it; LoRA
            weights stay fp32.
        gradient_checkpointing: recompute activations in the backward pass (less memory, slower).
        checkpoint_every: write a resumable checkpoint every this many steps.
        keep_checkpoints: newest checkpoints kept.
        log_every: steps between loss logs to MLflow.
        sample_steps, sample_guidance: the sample grid (one held-out prompt per scene) after training;
            ``sample_steps: 0`` skips it.
        max_pairs: train on the first N pairs only (quick runs); ``null`` = all.
        sampler: how batches are drawn. ``paired`` (default): each batch slot takes the kept pair with
            the smallest seeded hash of its ``pair_id``, so two runs on nested cleanings of one
            manifest draw the same pair in a slot unless it was dropped (common random numbers: the
            dual loop's trials and the arms differ by their data, not by their batch order);
            sampling is with replacement. ``epoch``: seeded epoch permutations (every pair once per
            epoch), which reshuffle completely when one pair is dropped.
        seed: seeds the LoRA initialisation, batches, noise and timesteps (a resumed run draws the
            same numbers as an uninterrupted one).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: torch CPU threads (0: torch's default).
    """

    base: str = "data/base/model"
    revision: str | None = None
    manifest: str = "data/ingest/manifest.parquet"
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    out: str = "data/finetune/raw"
    resolution: int = Field(64, ge=8)
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(_LORA_UNET_TARGETS), min_length=1)
    text_encoder_lora: bool = True
    text_target_modules: list[str] = Field(default_factory=lambda: list(_LORA_TEXT_TARGETS), min_length=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    noise_offset: float = Field(0.0, ge=0.0)
    snr_gamma: float | None = Field(5.0, gt=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    sample_steps: int = Field(20, ge=0)
    sample_guidance: float = Field(4.0, ge=0.0)
    max_pairs: int | None = Field(None, ge=1)
    sampler: Literal["paired", "epoch"] = "paired"
    seed: int = 0
    device: str = "auto"
    threads: int = Field(0, ge=0)


class GenerateConfig(_Section):
    """Images for the test split's prompts, for the base and each adapter (``dldc generate``).

    Attributes:
        base: hub id or folder of the base pipeline (every arm shares it).
        revision: hub revision of ``base``.
        arms: ``{arm name: adapter folder}``; ``""`` = the base model alone. Every arm uses the
            same prompts and seeds.
        manifest: where the prompts come from.
        split: the split whose captions are the prompts.
        prompts_per_image: captions of each image used as prompts, in caption order (``null``: all).
        images_per_prompt: images (seeds) per prompt.
        out: folder for ``images/<gen_id>.png``, ``generations.parquet`` and ``generate.json``.
        steps, guidance_scale: denoising steps and classifier-free guidance scale.
        scheduler: ``default`` (the base's own sampler), ``dpmsolver``, ``ddim``, ``euler``, ``pndm``.
        resolution: side in pixels; ``null`` = the base's native size.
        lora_scale: strength of the adapters.
        batch_size: prompts per pipeline call.
        seed: the seeds are derived from it and each prompt's ``pair_id`` (batch-independent).
        precision: ``auto`` (fp16 weights on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: torch CPU threads (0: torch's default).
    """

    base: str = "data/base/model"
    revision: str | None = None
    arms: dict[str, str] = Field(
        default_factory=lambda: {
            "base": "",
            "raw": "data/finetune/raw",
            "clean": "data/finetune/clean",
            "global": "data/finetune/global",  # the global-ratio baseline of `dldc select`
        },
        min_length=1,
    )
    manifest: str = "data/ingest/manifest.parquet"
    split: str = "test"
    prompts_per_image: int | None = Field(2, ge=1)
    images_per_prompt: int = Field(1, ge=1)
    out: str = "data/generate"
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(4.0, ge=0.0)
    scheduler: Literal["default", "dpmsolver", "ddim", "euler", "pndm"] = "default"
    resolution: int | None = Field(None, ge=8)
    lora_scale: float = Field(1.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: str = "auto"
    threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        import re

        for arm in self.arms:
            if not re.match(r"^[A-Za-z0-9_.-]+$", arm) or arm == "real":
                raise ValueError(f"arms: name {arm!r} must use letters, digits, '_', '.' or '-' and not be 'real'")
        return self


class ExportDatasetConfig(_Section):
    """The cleaned dataset in its source's format, with provenance (``dldc export-dataset``, :mod:`dldc.data.export`).

    Attributes:
        original: the ingest manifest (every pair with its original caption).
        cleaned: the kept pairs with their final captions (``dldc select``'s cleaned manifest).
        dropped: the selection's ``dropped.parquet`` (why each dropped pair went); ``null``: none.
        scores: the scores the selection ranked by, copied into the provenance table; ``null``: none.
        captions: EGL's ``captions.parquet`` (each repaired caption's round); ``null``: none.
        rejects: ingest's ``rejects.parquet`` (pairs rejected before cleaning); ``null``: none.
        format: ``source`` (the format ingest read), ``karpathy`` or ``folder``.
        images: ``link`` (hard links to the source's images, copies where links fail) or ``copy``.
        out: the export folder (annotations, images, ``provenance.parquet``, ``export.json``).
    """

    original: str = "data/ingest/manifest.parquet"
    cleaned: str = "data/select/cleaned_manifest.parquet"
    dropped: str | None = "data/select/dropped.parquet"
    scores: str | None = "data/captions/scores.parquet"
    captions: str | None = "data/captions/captions.parquet"
    rejects: str | None = "data/ingest/rejects.parquet"
    format: Literal["source", "karpathy", "folder"] = "source"
    images: Literal["link", "copy"] = "link"
    out: str = "data/cleaned"


class SelectConfig(_Section):
    """Per-scene cleaning-ratio selection, the dual loop's decision (``dldc select``, :mod:`dldc.select`).

    Attributes:
        scores: IEL scores of the final captions (``dldc caption``'s ``scores.parquet``).
        manifest: the manifest those scores belong to (``dldc caption``'s ``manifest.parquet``).
        out: folder for ``selection.json``, ``cleaned_manifest.parquet``, ``dropped.parquet``,
            ``global/cleaned_manifest.parquet`` (the global-ratio baseline), ``results.md``,
            ``results.parquet`` and ``plots/``.
        trials: folder of the loop's trials (``dldc select-trial``), one sub-folder per ratio.
        mode: ``proxy`` (no training: an objective on each scene's score distribution, with a
            bootstrap interval per scene), ``calibrate`` (the demo's: trials along the proxy's own
            path, every scene at its proxy ratio times one level λ from ``calibrate_levels``; λ by the
            one-SE rule on the whole held-out set), ``attribute`` (a Plackett–Burman screening design
            over the scenes, each scene's effect on the whole held-out set combined with the proxy
            into ``r*`` with an interval) or ``loop`` (the earlier reconstruction: one trial per
            ratio of ``grid``, every scene at it, judged per scene).
        grid: the ratios the proxy and ``loop`` try; ``r`` drops the lowest ``r`` of each scene by
            fused score.
        rows: the trial slots that ``dvc.yaml`` (``select_trial@i``) and the Kubeflow pipeline fan out
            over (``dldc select-trial --row I``): ``calibrate`` runs one per level, ``attribute`` one
            per design row (12 for 10 scenes, 24 with ``foldover``; ``dldc select`` says how many
            when there are too few), ``loop`` one per grid ratio; spare slots finish at once (idle).
        calibrate_levels: the λ values of ``calibrate`` (each scene cleaned at ``min(λ · proxy r,
            max_ratio)``).
        calibrate_tolerance: ``calibrate``: the smallest λ within this many paired SEs of the best
            (1: the one-SE rule).
        attribute_level: ``attribute``: the ratio a scene is cleaned at in the design's ``+`` rows
            (``null``: its proxy ratio, at least ``attribute_floor``).
        attribute_floor: the smallest ``+`` level (a scene the proxy leaves alone is still tested).
        foldover: ``attribute``: add the mirrored design rows (twice the trials; no two-scene
            interaction biases a main effect).
        max_ratio: the largest ratio any mode assigns.
        judge_filter: held-out prompts whose pairs fall below the proxy's cut of their scene (their
            captions are likely wrong) do not judge the trials.
        proxy_bootstrap: bootstrap replicates of the proxy's per-scene ``r*`` (its interval and the
            weight it gets against the trials); 0: none.
        low_confidence_width: a scene whose 80% interval of ``r*`` is wider than this is flagged.
        signal_floor: a scene whose generated images score below this share of the real held-out
            images' in-domain CLIPScore (mean over trials) is flagged: the generator does not draw it
            well enough for the trials to judge it.
        splits: the splits that are cleaned (never the held-out or test split).
        min_scene_pairs: scenes with fewer cleanable pairs take the global ratio (recorded).
        proxy_penalty: ``proxy`` objective: mean kept quality (pooled z-score of the raw cosines)
            minus this times ``r``.
        objective: ``loop`` objective: ``{metric: weight}`` over the trials' evaluation metrics
            (``CLIPScore-<label>``, ``FD-<label>``, ``KD-<label>``, ``FID``, ``KID``); each metric is
            scaled per scene by its bootstrap standard deviation (min-max over the grid when the
            trials have no bootstrap), direction-aware.
        tolerance: ``loop``: ``r*`` is the smallest ratio whose objective is within ``tolerance``
            paired bootstrap standard errors of the best ratio's (``1``: the one-standard-error
            rule, a difference the held-out prompts cannot resolve does not justify dropping data;
            ``0``: the plain best). Default 0: on SynthRS the rule kept too much noise
            (``benchmarks/select_ratio.py`` records the sweep). The errors are in ``selection.json``.
        eval_split: the held-out split whose prompts judge the trials (not the test split: that
            one measures the final result).
        trial_steps: fine-tuning steps of one trial (the other settings are ``finetune``'s).
        trial_prompts_per_image: held-out captions per image used as prompts (``null``: all).
        trial_images_per_prompt: seeds per prompt.
        trial_generate_steps: denoising steps of the trials' images (``null``: ``generate.steps``).
        trial_bootstrap: bootstrap replicates of each trial's per-scene evaluation. Every trial
            draws the same resamples of the same held-out prompts and images, so differences
            between ratios are paired; ``0`` turns off intervals (and ``tolerance``).
        plots: draw the histograms and curves (needs matplotlib; skipped with a note if missing).
    """

    scores: str = "data/captions/scores.parquet"
    manifest: str = "data/captions/manifest.parquet"
    out: str = "data/select"
    trials: str = "data/select/trials"
    mode: Literal["proxy", "calibrate", "attribute", "loop"] = "calibrate"
    grid: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], min_length=1)
    rows: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    calibrate_levels: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], min_length=2)
    calibrate_tolerance: float = Field(1.0, ge=0.0)
    attribute_level: float | None = Field(None, gt=0.0, lt=1.0)
    attribute_floor: float = Field(0.1, gt=0.0, lt=1.0)
    foldover: bool = False
    max_ratio: float = Field(0.9, gt=0.0, lt=1.0)
    judge_filter: bool = True
    proxy_bootstrap: int = Field(200, ge=0)
    low_confidence_width: float = Field(0.2, gt=0.0)
    signal_floor: float = Field(0.25, ge=0.0)
    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    min_scene_pairs: int = Field(20, ge=1)
    proxy_penalty: float = Field(1.0, ge=0.0)
    objective: dict[str, float] = Field(
        default_factory=lambda: {"CLIPScore-indomain": 1.0, "FD-indomain": 1.0}, min_length=1
    )
    eval_split: str = "val"
    trial_steps: int = Field(100, ge=1)
    trial_prompts_per_image: int | None = Field(2, ge=1)
    trial_images_per_prompt: int = Field(1, ge=1)
    trial_generate_steps: int | None = Field(None, ge=1)
    trial_bootstrap: int = Field(200, ge=0)
    tolerance: float = Field(0.0, ge=0.0)
    plots: bool = True

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        if any(not 0.0 <= r < 1.0 for r in self.grid):
            raise ValueError(f"grid: every ratio must be in [0, 1), got {self.grid}")
        if len(set(self.grid)) != len(self.grid):
            raise ValueError(f"grid: ratios must be distinct, got {self.grid}")
        if any(r < 0 for r in self.rows) or len(set(self.rows)) != len(self.rows):
            raise ValueError(f"rows: trial slots must be distinct integers >= 0, got {self.rows}")
        if any(v < 0 for v in self.calibrate_levels) or len(set(self.calibrate_levels)) != len(self.calibrate_levels):
            raise ValueError(f"calibrate_levels: levels must be distinct and >= 0, got {self.calibrate_levels}")
        if any(w < 0 for w in self.objective.values()) or sum(self.objective.values()) <= 0:
            raise ValueError(f"objective: weights must be >= 0 with a positive sum, got {self.objective}")
        if self.eval_split in self.splits:
            raise ValueError(f"eval_split {self.eval_split!r} must not be a cleaned (trained-on) split {self.splits}")
        return self


class SegmentConfig(_Section):
    """Downstream segmentation: real-only vs. real + synthetic arms (``dldc segment``, :mod:`dldc.segment`).

    Attributes:
        dataset: folder layout (``synthrs``, ``dubai``, ``loveda``, ``potsdam``, ``vaihingen``,
            ``deepglobe``; ``folder`` = ``image_glob`` / ``mask_pattern`` / ``mask_replace`` below).
        root: the dataset root; no image or mask path may resolve outside it.
        classes: class table name or JSON path (``null``: the layout's own, e.g. ``dubai-seg``
            with the colours its masks really use).
        image_glob, mask_pattern, mask_replace, binarize: the ``folder`` layout (glob of the images;
            regex on an image's relative path and its replacement = the mask's path; threshold RGB
            mask channels at 128 first).
        scale: resize factor applied to images (bilinear) and masks (nearest) before patching.
        patch_size: side of the square training / evaluation patches, in pixels.
        stride: step between training patches (``null``: ``patch_size``, no overlap); evaluation
            patches always use ``patch_size`` and never count a pixel twice.
        ignore_index: label of unlabeled pixels (left out of the loss and the metrics).
        split_ratios: train / val / test shares of the tiles (split by tile, never by patch).
        split_by: ``image`` (each image is a tile) or ``folder`` (its top folder is, e.g. ``tile_N``).
        split_seed: seed of the tile split (fixed: every arm sees the same split).
        max_pixels: decompression-bomb guard per image.
        model: ``unet`` (compact U-Net), ``lraspp`` or ``deeplabv3`` (torchvision, random weights).
        widths: U-Net channels per level.
        steps, batch_size, lr, weight_decay: the training budget, identical for every arm.
        class_weighting: pixel weights of the loss: ``inverse_sqrt`` (each class weighted by
            1/sqrt of its share of the real training pixels, normalised to a mean of 1 over the
            classes present and capped at 10, so thin classes such as roads are learned) or ``none``.
        checkpoint_every: resumable checkpoint period in steps (atomic writes).
        eval_every: validation mIoU period in steps (the validation curve).
        seed: model initialisation, batch order and flips.
        bootstrap: tile resamples for the confidence intervals (0: none); ``ci`` their coverage.
        protocols: synthetic-mask protocols run (``pseudo-label``, ``layout-prompt``); ``[]`` = real only.
        base, revision: the text-to-image base every synthetic arm shares.
        arms: ``{arm: adapter folder}`` for the synthetic arms (``""`` = the base alone).
        synthetic_per_arm: generated images per arm (``null``: one per real training patch); the
            same prompts and seeds for every arm.
        prompt_variant: mask2text variant of the layout prompts (``full``, ``brief``, ...).
        gen_steps, guidance_scale, scheduler, resolution, lora_scale, gen_batch_size, precision:
            generation settings (as ``generate``'s; ``resolution`` ``null`` = the base's native size).
        pseudo_label_threshold: ``pseudo-label`` pixels whose top class probability is below this
            are ignored (0: label every pixel).
        layout_filter: ``layout-prompt`` keeps a synthetic image only when the segmenter trained
            on the real split agrees with its source mask (the layout it was asked for) on at least
            this share of the labelled pixels; the others are recorded in ``rejects.parquet``
            (``null``: keep every image). Each arm's mean agreement is its *layout fidelity*.
        out: folder for ``results.json``, ``results.md``, ``per_class.parquet``, ``segment.json``,
            ``runs/`` and ``synthetic/``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``; ``threads``: torch CPU threads (0: default).
    """

    dataset: Literal["synthrs", "dubai", "loveda", "potsdam", "vaihingen", "deepglobe", "folder"] = "synthrs"
    root: str = "data/synthrs"
    classes: str | None = None
    image_glob: str = "images/*.png"
    mask_pattern: str = r"images/(.+)\.png"
    mask_replace: str = r"masks/\1.png"
    binarize: bool = False
    scale: float = Field(1.0, gt=0.0, le=1.0)
    patch_size: int = Field(64, ge=8)
    stride: int | None = Field(None, ge=1)
    ignore_index: int = Field(255, ge=1, le=255)
    split_ratios: list[float] = Field(default_factory=lambda: [0.6, 0.2, 0.2], min_length=3, max_length=3)
    split_by: Literal["image", "folder"] = "image"
    split_seed: int = 0
    max_pixels: int = Field(64_000_000, ge=1)
    model: Literal["unet", "lraspp", "deeplabv3"] = "unet"
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    steps: int = Field(120, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    class_weighting: Literal["none", "inverse_sqrt"] = "inverse_sqrt"
    checkpoint_every: int = Field(100, ge=1)
    eval_every: int = Field(50, ge=1)
    seed: int = 0
    bootstrap: int = Field(200, ge=0)
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    protocols: list[Literal["pseudo-label", "layout-prompt"]] = Field(
        default_factory=lambda: ["pseudo-label", "layout-prompt"]
    )
    base: str = "data/base/model"
    revision: str | None = None
    arms: dict[str, str] = Field(
        default_factory=lambda: {"base": "", "raw": "data/finetune/raw", "clean": "data/finetune/clean"}
    )
    synthetic_per_arm: int | None = Field(120, ge=1)
    prompt_variant: Literal["full", "brief", "cover", "places", "counts"] = "full"
    gen_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(4.0, ge=0.0)
    scheduler: Literal["default", "dpmsolver", "ddim", "euler", "pndm"] = "default"
    resolution: int | None = Field(None, ge=8)
    lora_scale: float = Field(1.0, ge=0.0)
    gen_batch_size: int = Field(32, ge=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    pseudo_label_threshold: float = Field(0.0, ge=0.0, lt=1.0)
    layout_filter: float | None = Field(0.5, gt=0.0, le=1.0)
    out: str = "data/segment"
    device: str = "auto"
    threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        import re

        for arm in self.arms:
            if not re.match(r"^[A-Za-z0-9_.-]+$", arm) or arm == "real":
                raise ValueError(f"arms: name {arm!r} must use letters, digits, '_', '.' or '-' and not be 'real'")
        if min(self.split_ratios) < 0 or self.split_ratios[0] <= 0 or self.split_ratios[2] <= 0:
            raise ValueError(f"split_ratios: train and test shares must be > 0, val >= 0; got {self.split_ratios}")
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"protocols: each at most once, got {self.protocols}")
        return self


class ReportConfig(_Section):
    """The cleaning report: one self-contained HTML folder (``dldc report``, :mod:`dldc.report`).

    Only ``manifest``, ``scores`` and ``selection`` are required. The other inputs are optional: a
    path that does not exist (the demo paths when that stage has not run) leaves its section out, and
    the report says so; ``null`` turns a section off.

    Attributes:
        manifest: the manifest the selection ranked (``dldc caption``'s, with the final captions).
        scores: its IEL scores (``dldc caption``'s ``scores.parquet``).
        selection: ``dldc select``'s folder (``selection.json``, ``dropped.parquet``).
        captions: ``dldc caption``'s folder (``captions.parquet``, ``caption.json``): EGL before/after.
        ingest: ``dldc ingest``'s folder (``rejects.parquet``, ``ingest.json``): rejects by reason.
        evaluation: ``dldc evaluate``'s folder (``results.json``): the metric tables and protocols.
        generations: ``dldc generate``'s folder (``generations.parquet``, ``images/``): sample grids.
        out: the report folder (``index.html``, ``thumbs/``), replaced as a whole.
        thumb_size: longest side of a thumbnail in pixels.
        thumb_format: ``jpeg`` (small) or ``png`` (lossless).
        thumb_quality: JPEG quality.
        lowest_dropped: per scene, the lowest-scoring dropped pairs shown.
        around_cut: per scene, pairs shown on each side of the cut.
        best_kept: per scene, the best kept pairs shown.
        egl_examples: per scene, repaired captions shown before/after (the biggest gains first).
        reject_examples: per ingest reject reason, examples shown.
        generation_prompts: prompts in the sample grid (the same prompt and seed for every arm).
        histogram_bins: bins of each scene's score histogram.
        score_column: the scorer cosine the histograms show (``null``: the first scorer of the scores).
        max_pixels: decompression-bomb guard when reading a dataset image for its thumbnail.
    """

    manifest: str = "data/captions/manifest.parquet"
    scores: str = "data/captions/scores.parquet"
    selection: str = "data/select"
    captions: str | None = "data/captions"
    ingest: str | None = "data/ingest"
    evaluation: str | None = "data/evaluate"
    generations: str | None = "data/generate"
    out: str = "data/report"
    thumb_size: int = Field(128, ge=16, le=1024)
    thumb_format: Literal["jpeg", "png"] = "jpeg"
    thumb_quality: int = Field(85, ge=1, le=95)
    lowest_dropped: int = Field(6, ge=0)
    around_cut: int = Field(3, ge=0)
    best_kept: int = Field(4, ge=0)
    egl_examples: int = Field(6, ge=0)
    reject_examples: int = Field(4, ge=0)
    generation_prompts: int = Field(6, ge=0)
    histogram_bins: int = Field(30, ge=2, le=200)
    score_column: str | None = None
    max_pixels: int = Field(64_000_000, ge=1)


class DldcConfig(_Section):
    """The whole configuration, one section per stage."""

    profile: str = "demo"  # a file of dldc/profiles/ (load_config checks the name)
    tracking: TrackingConfig = TrackingConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    indomain: IndomainConfig = IndomainConfig()
    score: ScoreConfig = ScoreConfig()
    caption: CaptionConfig = CaptionConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    promote: PromoteConfig = PromoteConfig()
    export: ExportConfig = ExportConfig()
    base: BaseConfig = BaseConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    generate: GenerateConfig = GenerateConfig()
    select: SelectConfig = SelectConfig()
    export_dataset: ExportDatasetConfig = ExportDatasetConfig()
    segment: SegmentConfig = SegmentConfig()
    report: ReportConfig = ReportConfig()


# Profiles are data shipped with the package: dldc/profiles/<name>.yaml holds the overrides a
# profile sets on top of the code defaults (which are the demo profile).
PROFILES_DIR = Path(__file__).with_name("profiles")


def list_profiles() -> dict[str, str]:
    """``{profile: what it is}`` (the first comment line of its file), as ``dldc config profiles`` lists them.

    Example:
        >>> sorted(list_profiles())
        ['demo', 'paper', 'quick', 'rsicd-dev']
    """
    profiles = {}
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        first = next(iter(path.read_text(encoding="utf-8").splitlines()), "")
        profiles[path.stem] = first.lstrip("#").strip() if first.startswith("#") else ""
    return profiles


def profile_settings(profile: str) -> dict[str, Any]:
    """The settings ``profile`` overrides (its data file), as a nested mapping.

    Raises:
        ConfigError: no such profile.

    Example:
        >>> profile_settings("paper")["finetune"]["base"]
        'stable-diffusion-v1-5/stable-diffusion-v1-5'
    """
    known = list_profiles()
    if profile not in known:
        raise ConfigError(f"profile: unknown profile {profile!r}; choose one of {sorted(known)}")
    return _read_yaml(PROFILES_DIR / f"{profile}.yaml")


def load_config(
    params_file: str | Path | None = DEFAULT_PARAMS_FILE,
    overrides: list[str] | tuple[str, ...] = (),
    updates: dict[str, Any] | None = None,
) -> DldcConfig:
    """Load and validate the configuration.

    Args:
        params_file: a ``params.yaml``; ``None`` (or the default name when it does not exist)
            means the embedded demo defaults.
        overrides: ``key.sub=value`` strings; values are parsed as YAML scalars or lists.
        updates: already-typed ``{"section.key": value}`` pairs (the CLI's explicit flags).

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: the file is unreadable or not a mapping, an override is malformed, or a
            key is unknown or has a bad value (the message names every such key).
    """
    raw: dict[str, Any] = {}
    if params_file is not None:
        path = Path(params_file)
        if path.exists():
            raw = _read_yaml(path)
        elif str(params_file) != DEFAULT_PARAMS_FILE:
            raise ConfigError(f"params file {path} does not exist")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value (as in `dvc exp run -S`)")
        _set_dotted(raw, key.strip(), _parse_scalar(value))
    for key, value in (updates or {}).items():
        _set_dotted(raw, key, value)

    profile = str(raw.get("profile", "demo"))
    merged = _deep_merge(profile_settings(profile), raw)
    try:
        cfg = DldcConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err, params_file)) from None
    overridden = profile_overrides(profile, cfg)
    if overridden:
        shown = ", ".join(overridden[:8]) + (f" and {len(overridden) - 8} more" if len(overridden) > 8 else "")
        log.warning(
            "the params file sets %d value(s) of the %r profile otherwise, and its values win: %s. For the whole "
            "profile, start from `dldc config init --profile %s --out params.yaml`.",
            len(overridden), profile, shown, profile,
        )  # fmt: skip
    return cfg


def profile_overrides(profile: str, cfg: DldcConfig) -> list[str]:
    """Dotted keys the profile sets that ``cfg`` (the profile plus a params file and overrides) holds otherwise.

    Example:
        >>> cfg = load_config(None, overrides=["profile=paper", "finetune.resolution=64", "finetune.rank=16"])
        >>> profile_overrides("paper", cfg)
        ['finetune.resolution']
    """
    chosen = profile_settings(profile)
    if not chosen:
        return []
    final = flatten(cfg.model_dump(mode="json"))
    pure = flatten(DldcConfig.model_validate(copy.deepcopy(chosen)).model_dump(mode="json"))
    return sorted(key for key in flatten(chosen) if key in pure and final.get(key) != pure[key])


def profile_params(profile: str) -> dict[str, Any]:
    """Every setting of a profile (the defaults with the profile's values), as a params file holds them.

    Raises:
        ConfigError: unknown profile.
    """
    profile_settings(profile)  # an unknown profile fails here, with the known ones
    return load_config(None, overrides=[f"profile={profile}"]).model_dump(mode="json")


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot be read as YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is a value, not a section")
        node = child
    node[leaf] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _describe(err: ValidationError, params_file: str | Path | None) -> str:
    where = str(params_file) if params_file and Path(params_file).exists() else "configuration"
    lines = [f"{where}: {err.error_count()} invalid setting(s):"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against `dldc config show`"
        lines.append(f"  {key}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)
