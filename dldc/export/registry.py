"""Exported scorers in MLflow: artifacts + parity metrics, a registered-model version and an alias.

:func:`log_export` (called by the ``export_scorer`` stage inside its MLflow run) logs the export
folder as the run's ``scorer/`` artifacts, the parity figures as metrics, identity and gate
outcome as tags, and registers the artifacts as a new version of a registered model with an
alias (``dldc-iel-scorer@exported`` by default). :func:`fetch_export` downloads the version an
alias points at and checks it like any export folder, so a pipeline run can use exactly that
scorer (``dldc fetch-scorer dldc-iel-scorer@exported --out data/scorer-onnx``, then ``onnx:…``).

The registered version's source is the run's artifact folder: MLflow's registry stores a
pointer, not a copy, and the folder is self-describing (``export.json``), so no pyfunc wrapper
is needed to use it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from dldc.config import TrackingConfig
from dldc.iel.onnx_scorer import read_export_meta, verify_files
from dldc.io import atomic_dir

ARTIFACT_PATH = "scorer"


def log_export(export_dir: str | Path, meta: dict[str, Any], registered_model: str | None, alias: str | None) -> dict:
    """Log an export folder to the *active* MLflow run and register it.

    Args:
        export_dir: the folder ``dldc export-scorer`` wrote.
        meta: its ``export.json`` content.
        registered_model: registered-model name; ``None`` logs artifacts and metrics only.
        alias: alias to point at the new version (e.g. ``exported``); ``None`` sets none.

    Returns:
        ``{"artifact_uri", "name", "version", "alias"}`` (the last three ``None`` when not registered).
    """
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_export needs an active MLflow run (call it inside tracking.stage_run)")
    figures = meta["parity"]["figures"]
    mlflow.log_metrics({f"parity.{k}": float(v) for k, v in figures.items() if isinstance(v, int | float)})
    mlflow.set_tags(
        {
            "export.scorer_id": meta["scorer_id"],
            "export.source_scorer_id": meta["source"]["scorer_id"],
            "export.source_checksum": meta["source"]["checksum"],
            "export.precision": meta["precision"],
            "export.parity_passed": str(meta["parity"]["passed"]).lower(),
        }
    )
    mlflow.log_artifacts(str(export_dir), artifact_path=ARTIFACT_PATH)
    artifact_uri = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    result: dict[str, Any] = {"artifact_uri": artifact_uri, "name": None, "version": None, "alias": None}
    if not registered_model:
        return result

    client = mlflow.MlflowClient()
    if not _registered_model_exists(client, registered_model):
        client.create_registered_model(registered_model, description="IEL scorers exported by dldc export-scorer")
    version = client.create_model_version(
        registered_model,
        source=artifact_uri,
        run_id=run.info.run_id,
        tags={
            "scorer_id": meta["scorer_id"],
            "precision": meta["precision"],
            "spearman": str(figures["spearman"]),
            "cosine_min": str(figures["cosine_min"]),
            "flip_rate": str(figures["flip_rate"]),
        },
        description=f"{meta['source']['spec']} exported to ONNX ({meta['precision']})",
    )
    if alias:
        client.set_registered_model_alias(registered_model, alias, version.version)
    result.update(name=registered_model, version=str(version.version), alias=alias)
    return result


def fetch_export(reference: str, out: str | Path, tracking: TrackingConfig) -> Path:
    """Download the exported scorer a registered-model alias (or version) points at.

    Args:
        reference: ``NAME@ALIAS`` (e.g. ``dldc-iel-scorer@exported``) or ``NAME/VERSION``.
        out: the folder to write (replaced atomically); use it as ``onnx:<out>``.
        tracking: where MLflow is.

    Returns:
        ``out``, holding a verified export.

    Raises:
        ValueError: a malformed reference.
        ExportInvalidError: the downloaded files do not match their ``export.json``.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking.resolved_uri())
    client = mlflow.MlflowClient()
    if "@" in reference:
        name, _, alias = reference.partition("@")
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in reference:
        name, _, number = reference.rpartition("/")
        version = client.get_model_version(name, number)
    else:
        raise ValueError(f"expected NAME@ALIAS or NAME/VERSION, got {reference!r}")
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(out) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=scratch))
        verify_files(local, read_export_meta(local))
        shutil.copytree(local, tmp, dirs_exist_ok=True)
    return Path(out)


def _registered_model_exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True
