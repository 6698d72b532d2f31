"""Typed configuration: ``params.yaml`` (DVC's params file) parsed into pydantic models.

Resolution order, later wins:

1. the code defaults below, which *are* the ``demo`` profile (CPU, offline, SynthRS);
2. the chosen profile's overrides (:data:`PROFILES`; ``profile: paper`` selects GPU settings);
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
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "dldc"
    artifact_location: str | None = None

    def resolved_uri(self) -> str:
        """The tracking URI in force (see ``uri``)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


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

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError(f"split_ratios must be 3 non-negative numbers summing to 1, got {self.split_ratios}")
        for scene, rate in self.noise_rate_by_scene.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"noise_rate_by_scene.{scene} must be in [0, 1], got {rate}")
        return self


class IngestConfig(_Section):
    """Reading a dataset into a manifest (``dldc ingest``).

    Attributes:
        format: ``karpathy`` (RSICD/UCM/Sydney JSON) or ``folder`` (``<scene>/<image>`` +
            ``captions.jsonl`` or ``captions.csv``).
        root: dataset root; every image path must stay inside it.
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
        near_duplicate_max_distance: perceptual-hash Hamming distance (of 64 bits) at or
            below which two images count as near-duplicates; ``-1`` turns the check off.
        workers: processes that decode images; ``0`` picks the number of CPU cores.
    """

    format: Literal["karpathy", "folder"] = "karpathy"
    root: str = "data/synthrs"
    out: str = "data/ingest"
    annotations: str | None = None
    image_dir: str | None = None
    scenes: str | None = None
    scene_source: Literal["auto", "txtclasses", "prefix", "none"] = "auto"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_pixels: int = Field(64_000_000, ge=1)
    min_side: int = Field(8, ge=1)
    near_duplicate_max_distance: int = Field(6, ge=-1, le=32)
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


class ScoreConfig(_Section):
    """Scoring every pair with one or more scorers (``dldc score``).

    Attributes:
        manifest: the manifest to score.
        out: folder for ``scores.parquet``, ``score.json``, shards and the embedding store.
        scorers: scorer specs: ``indomain:DIR``, ``open_clip:ARCH[:TAG_OR_CHECKPOINT]``,
            ``hf:HUB_ID_OR_DIR``.
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


class DldcConfig(_Section):
    """The whole configuration, one section per stage."""

    profile: Literal["demo", "paper"] = "demo"
    tracking: TrackingConfig = TrackingConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    indomain: IndomainConfig = IndomainConfig()
    score: ScoreConfig = ScoreConfig()


# Profile overrides on top of the code defaults (which are the demo profile). Later stages add
# their paper settings here as they arrive.
PROFILES: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": {
        "ingest": {"root": "data/rsicd", "workers": 0},
        "score": {
            "scorers": [
                "open_clip:ViT-L-14:openai",
                "open_clip:ViT-L-14:models/RemoteCLIP-ViT-L-14.pt",
                "indomain:data/scorer",
            ],
            "batch_size": 256,
            "workers": 8,
        },
        # RSICD-sized data: held-out alignment peaks near 8 epochs at batch 128 (iel_noise_auroc).
        "indomain": {"device": "cuda", "epochs": 8, "batch_size": 128},
    },
}


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

    profile = raw.get("profile", "demo")
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    merged = _deep_merge(copy.deepcopy(PROFILES[profile]), raw)
    try:
        return DldcConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err, params_file)) from None


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
