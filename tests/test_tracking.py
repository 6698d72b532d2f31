import sys

import mlflow
import pytest

from dldc.config import load_config
from dldc.stages import run_ingest
from dldc.tracking import GROUP_TAG, ROLE_TAG, default_run_group, stage_run


def _runs(uri, experiment):
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list")


def test_stages_nest_under_one_parent_run_per_group(mlflow_uri, rsicd_root, tmp_path):
    cfg = load_config(
        None,
        overrides=[
            f"tracking.uri={mlflow_uri}",
            "tracking.experiment=t-nesting",
            f"ingest.root={rsicd_root}",
            f"ingest.out={tmp_path / 'ingest'}",
        ],
    )
    run_ingest(cfg, progress=False)
    with stage_run(cfg.tracking, "other-stage", {"a": {"b": 1}}, run_group="fixed-group") as run:
        run.log_metrics({"x": 1, "nested": {"y": 2.5}, "skip": "text"})
    with stage_run(cfg.tracking, "second-stage", {}, run_group="fixed-group"):
        pass

    runs = _runs(mlflow_uri, "t-nesting")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    stages = [r for r in runs if r.data.tags.get(ROLE_TAG) == "stage"]
    assert len(parents) == 2 and len(stages) == 3
    fixed = next(p for p in parents if p.data.tags[GROUP_TAG] == "fixed-group")
    children = [r for r in stages if r.data.tags["mlflow.parentRunId"] == fixed.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["other-stage", "second-stage"]
    other = next(r for r in children if r.info.run_name == "other-stage")
    assert other.data.params == {"a.b": "1"} and other.data.metrics == {"x": 1.0, "nested.y": 2.5}

    ingest_run = next(r for r in stages if r.info.run_name == "ingest")
    assert ingest_run.data.metrics["kept_pairs"] == 9300
    assert ingest_run.data.params["near_duplicate_max_distance"] == "6"
    inputs = ingest_run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["manifest"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(ingest_run.info.run_id)}
    assert artifacts == {"ingest.json", "rejects.parquet"}


def test_failed_stage_marks_run_failed(mlflow_uri):
    cfg = load_config(None, overrides=[f"tracking.uri={mlflow_uri}", "tracking.experiment=t-fail"])
    with pytest.raises(RuntimeError), stage_run(cfg.tracking, "boom", {}, run_group="g"):
        raise RuntimeError("stage failed")
    stage = next(r for r in _runs(mlflow_uri, "t-fail") if r.data.tags.get(ROLE_TAG) == "stage")
    assert stage.info.status == "FAILED"


def test_disabled_tracking_logs_nothing_even_with_a_tracking_uri_in_the_environment(tmp_path, monkeypatch):
    # Disabled tracking must ignore $MLFLOW_TRACKING_URI (which `tracking.uri: null` would otherwise
    # resolve to) and must not even import MLflow: a stand-in None in sys.modules makes any
    # `import mlflow` raise.
    store = tmp_path / "env-store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, overrides=["tracking.enabled=false"])
    assert cfg.tracking.resolved_uri() == f"sqlite:///{store}"  # where an enabled run would go
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with stage_run(cfg.tracking, "quiet", {"a": 1}, run_group="g") as run:
        assert not run.enabled and run.run_id is None
        run.log_metrics({"x": 1})
        run.log_artifact(tmp_path / "missing.txt")
        run.log_dataset(None, tmp_path, "manifest", "input")
        run.set_tags({"k": "v"})
    assert list(tmp_path.iterdir()) == []  # neither the environment's store nor ./mlflow.db or ./mlruns


def test_run_group_from_environment_or_params(tmp_path, monkeypatch):
    monkeypatch.setenv("DLDC_RUN_GROUP", "job-123")
    assert default_run_group() == "job-123"
    monkeypatch.delenv("DLDC_RUN_GROUP")
    params = tmp_path / "params.yaml"
    params.write_text("synth: {seed: 1}\n")
    first = default_run_group(params)
    params.write_text("synth: {seed: 2}\n")
    assert first.startswith("local-") and default_run_group(params) != first


def test_a_pod_refuses_a_local_tracking_store_unless_allowed(tmp_path, monkeypatch):
    """In a Kubernetes pod a SQLite file or folder vanishes with the pod: the stage stops and says why."""
    from dldc.config import TrackingConfig

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.chdir(tmp_path)
    local = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match="vanish with it.*tracking_secret.*allow_local_store"), stage_run(
        local, "ingest", {}, run_group="g"
    ):
        pass
    assert not (tmp_path / "mlflow.db").exists()
    with stage_run(local.model_copy(update={"allow_local_store": True}), "ingest", {}, run_group="g") as run:
        assert run.enabled
