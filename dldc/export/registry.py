"""Exported scorers in MLflow: artifacts + parity metrics, a registered-model version and an alias.

:func:`log_export` (called by the ``export_scorer`` stage inside its MLflow run) logs the export
folder as the run's ``scorer/`` artifacts, the parity figures as metrics, identity and gate
outcome as tags, and registers the artifacts as a new version of a registered model with an
alias (``dldc-iel-scorer@exported`` by default). :func:`fetch_export` downloads the version an
alias points at and checks it like any export folder, so a pipeline run can use exactly that
scorer (``dldc fetch-scorer dldc-iel-scorer@exported --out data/scorer-onnx``, then ``onnx:…``).

The export is logged as a pyfunc MLflow model (:mod:`dldc.export.scorer_pyfunc`: the export
folder is its ``export`` artifact, ``dldc`` ships as its code), and the registered version's
source is that model, so a registered scorer loads and scores without dldc installed::

    model = mlflow.pyfunc.load_model("models:/dldc-iel-scorer@exported")
    model.predict(pd.DataFrame({"image": [png_bytes], "caption": ["a river"]}))  # column ``cosine``

Logging runs nothing: the signature and pip requirements are given, not inferred.
:func:`fetch_export` reads the export folder out of the model (or, for versions registered
before, the plain folder they point at).
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
PYFUNC_CODE = Path(__file__).with_name("scorer_pyfunc.py")
EXPORT_ARTIFACT = "export"


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
    with tempfile.TemporaryDirectory() as staging:
        save_scorer_model(export_dir, Path(staging) / "model")
        mlflow.log_artifacts(str(Path(staging) / "model"), artifact_path=ARTIFACT_PATH)
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
        local = _export_folder(Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=scratch)))
        verify_files(local, read_export_meta(local))
        shutil.copytree(local, tmp, dirs_exist_ok=True)
    return Path(out)


def save_scorer_model(export_dir: str | Path, out: str | Path) -> None:
    """Write the pyfunc MLflow model of an export folder at ``out`` (see the module docstring); runs nothing."""
    import importlib.metadata

    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, Schema
    from mlflow.types.schema import ColSpec

    import dldc

    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.string, "caption"),
                       ColSpec(DataType.string, "image_id", required=False)]),
        outputs=Schema([ColSpec(DataType.double, "cosine")]),
    )  # fmt: skip
    requirements = []
    for package in ("onnxruntime", "onnxruntime-gpu", "torch", "numpy", "pandas", "pyarrow", "pillow",
                    "open_clip_torch", "transformers", "tqdm", "mlflow"):  # fmt: skip
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    with tempfile.TemporaryDirectory() as staging:
        # The dldc package as the model's code, without caches of compiled bytecode.
        code = shutil.copytree(Path(dldc.__file__).parent, Path(staging) / "dldc",
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(PYFUNC_CODE),
            artifacts={EXPORT_ARTIFACT: str(export_dir)},
            code_paths=[str(code)],
            signature=signature,
            input_example=pd.DataFrame({"image": [_example_png()], "caption": ["an aerial image of a river"]}),
            pip_requirements=requirements,
        )


def _example_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (70, 110, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def _export_folder(local: Path) -> Path:
    """The export folder inside a downloaded model version (or the version's folder itself, as registered before)."""
    if not (local / "MLmodel").is_file():
        return local
    from mlflow.models import Model

    pyfunc = Model.load(str(local / "MLmodel")).flavors["python_function"]
    return local / pyfunc["artifacts"][EXPORT_ARTIFACT]["path"]


def _registered_model_exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True
