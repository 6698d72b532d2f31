"""Run the pipeline on this machine with ``kfp.local`` (every task a subprocess of this interpreter).

``python -m pipelines run-local --root DIR [--param KEY=VALUE]...`` runs the same compiled graph a
Kubeflow cluster runs, conditions included; the tests run it this way too.

kfp 2.17's local orchestrator resolves ``dsl.OneOf`` for parameters but not for artifacts: a
condition group whose output artifact comes from one of two branches fails with "Expected 1
artifact in ArtifactSelectorSpec". The KFP backend resolves both. :func:`init` therefore installs
the same rule for artifacts that kfp.local applies to parameters: take the one branch that produced
the output, and fail when none or several did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _one_of_artifacts(cls: Any, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
    outputs = {}
    for key, spec in dag_outputs_spec.artifacts.items():
        produced = []
        for selector in spec.artifact_selectors:
            try:
                produced.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
            except (KeyError, ValueError):  # that branch did not run
                continue
        if len(produced) != 1:
            raise ValueError(f"dsl.OneOf output {key!r}: {len(produced)} branches produced it, expected exactly one")
        outputs[key] = produced[0]
    return outputs


def run(**params: Any) -> Any:
    """Run the dldc pipeline once (after :func:`init`), as one MLflow run group.

    On a cluster each pod reads its run's id from the ``pipeline/runid`` label; here every task is a
    subprocess of this one, so the run's group goes into their environment (``DLDC_RUN_GROUP``).
    """
    import os
    import uuid

    from dldc.tracking import RUN_GROUP_ENV
    from pipelines.dldc_pipeline import dldc_pipeline

    before = os.environ.get(RUN_GROUP_ENV)
    os.environ[RUN_GROUP_ENV] = f"kfp-local-{uuid.uuid4().hex[:12]}"
    try:
        return dldc_pipeline(**params)
    finally:
        if before is None:
            os.environ.pop(RUN_GROUP_ENV, None)
        else:
            os.environ[RUN_GROUP_ENV] = before


def init(pipeline_root: str | Path) -> None:
    """``kfp.local.init`` with the subprocess runner in this interpreter, and artifact ``dsl.OneOf`` resolved."""
    from kfp import local
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    OrchestratorUtils.get_dag_output_artifacts = classmethod(_one_of_artifacts)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
