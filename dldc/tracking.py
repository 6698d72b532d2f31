"""MLflow tracking for stages: one parent run per pipeline run, one nested run per stage.

Stages run as separate processes (DVC, Kubeflow), so the parent run is found by a tag,
``dldc.run_group``. The group comes from the ``DLDC_RUN_GROUP`` environment variable (the
Kubeflow pipeline passes its job id); without it, from the content of ``params.yaml`` and
the git commit, so the stages of one ``dvc repro`` share a parent.

MLflow is imported lazily: it is slow to import and not needed when tracking is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dldc.config import TrackingConfig, flatten

RUN_GROUP_ENV = "DLDC_RUN_GROUP"
GROUP_TAG = "dldc.run_group"
ROLE_TAG = "dldc.role"
# Each stage's headline figures: flat ``{name: number}``, in the stage's output folder. DVC's
# ``metrics:``, the Kubeflow components' Metrics output and MLflow all read this one file.
METRICS_FILE = "metrics.json"


def metric_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten ``metrics`` to dotted names and keep the finite numbers (bools, strings, NaN dropped).

    Example:
        >>> metric_numbers({"pairs": 10, "ratio": {"forest": 0.2}, "mode": "loop", "mIoU": float("nan")})
        {'pairs': 10.0, 'ratio.forest': 0.2}
    """
    return {
        _metric_name(key): float(value)
        for key, value in flatten(dict(metrics)).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def write_metrics(folder: str | Path, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Write ``folder/metrics.json`` (atomically) from :func:`metric_numbers`; returns what it wrote."""
    from dldc.io import write_json

    numbers = metric_numbers(metrics)
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json(Path(folder) / METRICS_FILE, numbers)
    return numbers


def write_plot_table(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write a curve as CSV (atomically): the rows ``dvc plots show`` draws (dvc.yaml ``plots:``).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_plot_table(folder / "loss.csv", [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
        >>> (folder / "loss.csv").read_text().splitlines()
        ['step,loss', '1,0.5', '2,0.25']
    """
    import csv
    import io

    from dldc.io import atomic_path

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def read_metrics(folder: str | Path) -> dict[str, float]:
    """The stage metrics in ``folder/metrics.json`` (``{}`` when the stage wrote none)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return {}
    return {str(key): float(value) for key, value in json.loads(path.read_text(encoding="utf-8")).items()}


class StageRun:
    """What a stage may log. A disabled run accepts every call and records nothing."""

    def __init__(self, mlflow: Any | None = None, run_id: str | None = None):
        self._mlflow = mlflow
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric values (nested dicts become dotted names; non-numbers are skipped).

        ``step`` makes the values one point of a curve (e.g. the training loss per step).
        """
        if self._mlflow is None:
            return
        numbers = metric_numbers(metrics)
        if numbers:
            self._mlflow.log_metrics(numbers, step=step)

    def finish(self, folder: str | Path, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The stage's headline figures: write ``folder/metrics.json`` and log the same numbers."""
        numbers = write_metrics(folder, metrics)
        self.log_metrics(numbers)
        return numbers

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Log every file under ``folder`` (a whole output folder, such as the report's)."""
        if self._mlflow is not None:
            self._mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_dataset(self, frame: Any, source: str | Path, name: str, context: str) -> None:
        """Record a table (a pandas DataFrame) as this run's dataset input."""
        if self._mlflow is None:
            return
        dataset = self._mlflow.data.from_pandas(frame, source=str(source), name=name)
        self._mlflow.log_input(dataset, context=context)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._mlflow is not None:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


def default_run_group(params_file: str | Path = "params.yaml") -> str:
    """The run group of this process: ``$DLDC_RUN_GROUP`` or a hash of params and commit."""
    if os.environ.get(RUN_GROUP_ENV):
        return os.environ[RUN_GROUP_ENV]
    digest = hashlib.sha256()
    path = Path(params_file)
    if path.is_file():
        digest.update(path.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        digest.update(head.stdout.strip().encode())
    except (OSError, subprocess.SubprocessError):
        pass
    return f"local-{digest.hexdigest()[:12]}"


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig, stage: str, params: Mapping[str, Any], run_group: str | None = None
) -> Iterator[StageRun]:
    """Open a nested MLflow run for one stage under its pipeline's parent run.

    Args:
        cfg: the tracking section of the configuration.
        stage: the stage name (the run's name).
        params: stage parameters; nested dicts are flattened to dotted names.
        run_group: the parent run's group; defaults to :func:`default_run_group`.

    Yields:
        A :class:`StageRun` to log metrics and artifacts with. A stage that raises marks its
        run ``FAILED``. When the same stage later succeeds in the same group (a repro after a
        fix), its earlier ``FAILED`` runs under that parent are deleted (MLflow's soft delete:
        restorable, listed with ``ViewType.DELETED_ONLY``), so the parent shows one run per stage.
    """
    if not cfg.enabled:
        yield StageRun()
        return
    if os.environ.get("KUBERNETES_SERVICE_HOST") and cfg.is_local_store() and not cfg.allow_local_store:
        raise ValueError(
            f"tracking.uri is {cfg.resolved_uri()}, a file inside this pod: the runs would vanish with it. Give the "
            "pods a tracking server (pipelines/resources.json \"tracking_secret\": a Kubernetes secret with the URI), "
            "or set tracking.uri, or tracking.allow_local_store: true to keep them in the pod anyway"
        )
    import mlflow

    mlflow.set_tracking_uri(cfg.resolved_uri())
    experiment_id = _experiment_id(mlflow, cfg)
    group = run_group or default_run_group()
    parent_id = _parent_run_id(mlflow, experiment_id, group)
    with (
        mlflow.start_run(run_id=parent_id),
        mlflow.start_run(
            run_name=stage, nested=True, experiment_id=experiment_id, tags={GROUP_TAG: group, ROLE_TAG: "stage"}
        ) as run,
    ):
        mlflow.log_params({key: _param_value(value) for key, value in flatten(dict(params)).items()})
        yield StageRun(mlflow, run.info.run_id)
        _delete_failed_attempts(mlflow, experiment_id, parent_id, stage)


def _delete_failed_attempts(mlflow: Any, experiment_id: str, parent_id: str, stage: str) -> None:
    failed = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{ROLE_TAG}` = 'stage' "
            f"and attributes.run_name = '{stage}' and attributes.status = 'FAILED'"
        ),
        output_format="list",
    )
    client = mlflow.MlflowClient()
    for run in failed:
        client.delete_run(run.info.run_id)


def _experiment_id(mlflow: Any, cfg: TrackingConfig) -> str:
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.artifact_location
    uri = cfg.resolved_uri()
    if location is None and uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # another stage created it in the meantime
        found = mlflow.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


def _parent_run_id(mlflow: Any, experiment_id: str, group: str) -> str:
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{GROUP_TAG}` = '{group}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    if runs:
        return runs[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"pipeline {group}", tags={GROUP_TAG: group, ROLE_TAG: "pipeline"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _metric_name(key: str) -> str:
    # MLflow allows letters, digits and _ - . / and spaces in names.
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
