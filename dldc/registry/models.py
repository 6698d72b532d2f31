"""Fine-tuned adapters as versions of an MLflow registered model that loads and generates.

Each LoRA adapter (the safetensors + JSON files ``dldc finetune`` writes, which diffusers'
``load_lora_weights`` reads) is saved as an MLflow model (:mod:`dldc.registry.adapter_model`):
the ``mlflow.diffusers`` flavor with the base as a pinned hub reference, or, for a base folder
such as the demo's, a pyfunc model that ships the base inside it. The model is logged into the
promote stage's run (``model/``) and registered as a version of ``registry.model_name``
(:meth:`mlflow.MlflowClient.create_model_version` on that artifact URI). Saving it runs no model.

Load and generate::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/dldc-t2i-lora@champion")
    pngs = model.predict(["an aerial image of a river", "a dense forest"],
                         params={"num_inference_steps": 20, "seed": 0})
    # a list of PNG-encoded images (bytes), one per prompt:
    # numpy.asarray(PIL.Image.open(io.BytesIO(pngs[0])))  ->  uint8 array, height x width x 3

``seed`` is honoured by bundled-base models only (``mlflow.diffusers``' pyfunc draws fresh
noise); a hub-base version also loads as a diffusers pipeline with
``mlflow.diffusers.load_model(uri).load_pipeline()``.

Version tags:

==================== ==============================================================
tag                  value
==================== ==============================================================
adapter_sha256       digest of the weight files (names and bytes): the identity of
                     an adapter; the same weights are registered once
arm                  the evaluation arm the candidate was
base_model           the base the adapter applies to: ``<hub id>@<revision>`` (or
                     ``<hub id>`` when the adapter recorded no revision), or
                     ``bundled:<folder name>`` for a base shipped inside the model
data.manifest        the training manifest, ``data.manifest_sha256`` its hash,
                     ``data.dvc_md5`` / ``data.dvc_stage`` DVC's record of it,
                     ``data.git_rev`` / ``data.git_dirty`` the code revision
eval.protocol        fingerprint of the evaluation protocol (real images, prompts,
                     seeds, resolution, extractors); numbers with different
                     fingerprints are not comparable
eval.<metric>        the metric's value on the whole test split (``eval.FID``,
                     ``eval.CLIPScore-clip``, ...)
promotion.*          the last promotion decision: outcome, reason, compared_with,
                     evidence (``paired_bootstrap`` when the champion is an arm of
                     the same evaluation, else ``point_estimates``), vs_champion /
                     vs_baselines (JSON: per arm and metric the delta, its
                     paired-bootstrap interval and whether it passed)
==================== ==============================================================
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from dldc.registry.adapter_model import BaseReference, save_adapter_model, stage_adapter

EVAL_TAG_PREFIX = "eval."
PROTOCOL_TAG = "eval.protocol"
DIGEST_TAG = "adapter_sha256"
BASE_TAG = "base_model"
ARTIFACT_PATH = "model"
_TAG_LIMIT = 5000  # MLflow's tag value limit is 5000 characters (8000 in newer stores)


def adapter_files(folder: str | Path, patterns: list[str]) -> list[Path]:
    """The files of an adapter folder that are registered: top-level files matching ``patterns``.

    Raises:
        ValueError: no file matches (not an adapter folder?).
    """
    folder = Path(folder)
    files = sorted(
        path for path in folder.iterdir() if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    )
    if not files:
        raise ValueError(f"{folder} holds no files matching {patterns}; is it an adapter folder from `dldc finetune`?")
    return files


def adapter_digest(folder: str | Path, patterns: list[str]) -> str:
    """The identity of an adapter: sha256 over the names and bytes of its weight files.

    The weights are the registered ``*.safetensors`` files (all registered files when there are
    none): a re-run that writes the same weights but a new report (timings) is the same adapter.

    Example:
        >>> import pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
        >>> first = adapter_digest(folder, ["*.safetensors", "*.json"])
        >>> _ = (folder / "finetune.json").write_text("{}")
        >>> adapter_digest(folder, ["*.safetensors", "*.json"]) == first
        True
    """
    files = adapter_files(folder, patterns)
    weights = [path for path in files if path.suffix == ".safetensors"] or files
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _tag_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _TAG_LIMIT else text[: _TAG_LIMIT - 3] + "..."


class Registry:
    """One registered model in an MLflow model registry.

    Args:
        tracking_uri: the MLflow tracking (and registry) URI, e.g. ``sqlite:///mlflow.db``.
        model_name: the registered model; created on first use.
    """

    def __init__(self, tracking_uri: str, model_name: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.model_name = model_name

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.model_name, description="LoRA adapters fine-tuned by dldc (see dldc.registry)"
                )
            except MlflowException:  # created concurrently
                self.client.get_registered_model(self.model_name)

    def find(self, digest: str) -> Any | None:
        """The version whose ``adapter_sha256`` tag is ``digest`` (the newest if several)."""
        self._ensure_model()
        versions = self.client.search_model_versions(f"name='{self.model_name}' and tag.{DIGEST_TAG}='{digest}'")
        return max(versions, key=lambda v: int(v.version)) if versions else None

    def register_adapter(
        self,
        folder: str | Path,
        patterns: list[str],
        run_id: str,
        base: BaseReference,
        tags: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        protocol: str | None = None,
    ) -> Any:
        """Register an adapter folder as a loadable MLflow model (once per distinct weights) and tag it.

        Args:
            folder: the adapter folder.
            patterns: which top-level files are the adapter (``registry.adapter_files``).
            run_id: the run the model is logged into (``model/``) when the weights are new.
            base: the base the adapter applies to (:func:`~dldc.registry.adapter_model.adapter_base`):
                referenced (hub id and revision) or bundled into the model.
            tags: extra version tags.
            data: the data version (:func:`dldc.registry.data_version.data_version`).
            metrics: evaluation metrics (whole test split) → ``eval.<metric>`` tags.
            protocol: the evaluation's protocol fingerprint → ``eval.protocol``.

        Returns:
            The (new or existing) model version, with its tags updated.
        """
        digest = adapter_digest(folder, patterns)
        version = self.find(digest)
        all_tags = {DIGEST_TAG: digest, BASE_TAG: base.tag, **(tags or {}), **self._data_tags(data or {})}
        if metrics:
            all_tags.update({f"{EVAL_TAG_PREFIX}{name}": value for name, value in metrics.items()})
        if protocol:
            all_tags[PROTOCOL_TAG] = protocol
        if version is None:
            source = self._log_model(folder, patterns, run_id, base, {DIGEST_TAG: digest, BASE_TAG: base.tag})
            version = self.client.create_model_version(
                self.model_name,
                source=source,
                run_id=run_id,
                tags={k: _tag_value(v) for k, v in all_tags.items() if v is not None},
                description=f"LoRA adapter on {base.tag}",
            )
        else:
            for key, value in all_tags.items():
                if value is not None:
                    self.client.set_model_version_tag(self.model_name, version.version, key, _tag_value(value))
        return self.client.get_model_version(self.model_name, version.version)

    def _log_model(
        self, folder: str | Path, patterns: list[str], run_id: str, base: BaseReference, metadata: dict[str, str]
    ) -> str:
        # Only the adapter's own files go into the model: no checkpoints or optimizer states from sub-folders.
        with tempfile.TemporaryDirectory() as staging:
            adapter = stage_adapter(adapter_files(folder, patterns), Path(staging) / "adapter")
            save_adapter_model(adapter, base, Path(staging) / ARTIFACT_PATH, metadata)
            self.client.log_artifacts(run_id, str(Path(staging) / ARTIFACT_PATH), artifact_path=ARTIFACT_PATH)
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        return f"{artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"

    @staticmethod
    def _data_tags(data: dict[str, Any]) -> dict[str, Any]:
        dvc = data.get("dvc") or {}
        return {
            "data.manifest": data.get("manifest"),
            "data.manifest_sha256": data.get("manifest_sha256"),
            "data.dvc_md5": dvc.get("md5"),
            "data.dvc_stage": dvc.get("stage"),
            "data.git_rev": data.get("git_rev"),
            "data.git_dirty": data.get("git_dirty"),
        }

    def version_by_alias(self, alias: str) -> Any | None:
        """The version an alias points at, or ``None`` when the alias is not set."""
        from mlflow.exceptions import MlflowException

        self._ensure_model()
        try:
            return self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        """Tag a version with a promotion decision (outcome, reason, what it was compared with)."""
        before = decision.get("champion_before") or {}
        tags = {
            "promotion.outcome": decision["outcome"],
            "promotion.promoted": str(bool(decision["promoted"])).lower(),
            "promotion.reason": decision["reason"],
            "promotion.compared_with": before.get("version") or "none",
            "promotion.time": decision["time"],
        }
        if decision.get("champion_evidence"):
            tags["promotion.evidence"] = decision["champion_evidence"].split(":")[0]
        # The intervals the gate read: vs the champion's arm (same draws) and vs each baseline arm.
        for prefix, checks in (("promotion.vs_champion", decision.get("champion_checks")),
                               ("promotion.vs_baselines", decision.get("baselines"))):  # fmt: skip
            compared = [c for c in checks or [] if c.get("metric")]
            if compared:
                tags[prefix] = [
                    {key: c[key] for key in ("baseline", "metric", "delta", "ci_low", "ci_high", "passed")}
                    for c in compared
                ]
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, _tag_value(value))

    @staticmethod
    def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
        """``{metric: value}`` from ``eval.<metric>`` tags (the protocol tag left out)."""
        metrics = {}
        for key, value in tags.items():
            if key.startswith(EVAL_TAG_PREFIX) and key != PROTOCOL_TAG:
                try:
                    metrics[key[len(EVAL_TAG_PREFIX) :]] = float(value)
                except ValueError:
                    continue
        return metrics
