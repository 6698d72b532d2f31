"""What users see when things go wrong: empty results, OS errors, failed runs, logging."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import ViewType
from PIL import Image

from dldc.config import load_config
from dldc.data.manifest import EmptyManifestError, read_manifest
from dldc.stages import run_ingest
from dldc.tracking import GROUP_TAG, ROLE_TAG, stage_run


def _dldc(*args, cwd):
    command = [sys.executable, "-m", "dldc", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def _unusable_dataset(root):
    """Three images, every one of them unusable: two not images, one too small."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"not a jpeg")
    (root / "images" / "b.jpg").write_bytes(b"nor this")
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "RGB").save(root / "images" / "c.png")
    entries = [
        {"filename": name, "split": "train", "sentences": [{"raw": f"caption {k}"} for k in range(2)]}
        for name in ("a.jpg", "b.jpg", "c.png")
    ]
    (root / "dataset_x.json").write_text(json.dumps({"images": entries}))


@pytest.mark.parametrize("tracking", [False, True])
def test_ingest_that_keeps_nothing_is_an_error_naming_the_reasons(tmp_path, mlflow_uri, tracking):
    _unusable_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "manifest.parquet").write_bytes(b"an earlier run's manifest")
    cfg = load_config(
        None,
        overrides=[
            f"tracking.enabled={str(tracking).lower()}",
            f"tracking.uri={mlflow_uri}",
            "tracking.experiment=t-empty",
            f"ingest.root={tmp_path / 'ds'}",
            f"ingest.out={out}",
        ],
    )
    with pytest.raises(EmptyManifestError) as caught:
        run_ingest(cfg, progress=False)
    message = str(caught.value)
    assert "kept 0 of 6 pairs" in message and "not_an_image x4" in message and "too_small x2" in message
    assert "images/a.jpg" in message
    # No manifest for the next stage to start from; the record of why stays.
    assert not (out / "manifest.parquet").exists()
    assert len(pd.read_parquet(out / "rejects.parquet")) == 6
    if tracking:
        mlflow.set_tracking_uri(mlflow_uri)
        runs = mlflow.search_runs(experiment_names=["t-empty"], output_format="list")
        assert [r.info.status for r in runs if r.data.tags.get(ROLE_TAG) == "stage"] == ["FAILED"]


def test_cli_errors_are_one_line(tmp_path):
    _unusable_dataset(tmp_path / "ds")
    (tmp_path / "params.yaml").write_text("tracking:\n  enabled: false\n")
    empty = _dldc("ingest", "--root", "ds", "--out", "out", cwd=tmp_path)
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert empty.stderr.startswith("Error: ") and "kept 0 of 6 pairs" in empty.stderr

    (tmp_path / "a-file").write_text("x")
    under_a_file = _dldc("ingest", "--root", "ds", "--out", "a-file/out", cwd=tmp_path)
    assert under_a_file.returncode == 1 and "Traceback" not in under_a_file.stderr
    assert under_a_file.stderr.strip().splitlines()[-1].startswith("Error: Not a directory: ")

    missing = _dldc("score", "--manifest", "nowhere/manifest.parquet", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "nowhere/manifest.parquet" in missing.stderr

    verbose = _dldc("-v", "ingest", "--root", "ds", "--out", "a-file/out", cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr  # -v keeps the traceback


def test_truncated_manifest_is_a_clear_error(tmp_path, rsicd_root):
    cfg = load_config(
        None, overrides=["tracking.enabled=false", f"ingest.root={rsicd_root}", f"ingest.out={tmp_path / 'i'}"]
    )
    manifest = run_ingest(cfg, progress=False).manifest
    whole = manifest.read_bytes()
    manifest.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="not a readable Parquet manifest"):
        read_manifest(manifest)


def test_a_later_success_deletes_the_failed_attempts_under_the_parent(mlflow_uri):
    cfg = load_config(None, overrides=[f"tracking.uri={mlflow_uri}", "tracking.experiment=t-retry"])
    for _ in range(2):
        with pytest.raises(RuntimeError), stage_run(cfg.tracking, "score", {}, run_group="retry"):
            raise RuntimeError("disk full")
    with stage_run(cfg.tracking, "other", {}, run_group="retry"):
        pass
    mlflow.set_tracking_uri(mlflow_uri)
    stages = [
        r
        for r in mlflow.search_runs(experiment_names=["t-retry"], output_format="list")
        if r.data.tags.get(ROLE_TAG) == "stage"
    ]
    assert sorted((r.info.run_name, r.info.status) for r in stages) == [
        ("other", "FINISHED"),
        ("score", "FAILED"),
        ("score", "FAILED"),
    ]  # another stage's success leaves score's failures in place

    with stage_run(cfg.tracking, "score", {}, run_group="retry") as run:
        run.log_metrics({"pairs": 3})
    active = [
        r
        for r in mlflow.search_runs(experiment_names=["t-retry"], output_format="list")
        if r.data.tags.get(ROLE_TAG) == "stage"
    ]
    assert sorted((r.info.run_name, r.info.status) for r in active) == [("other", "FINISHED"), ("score", "FINISHED")]
    deleted = mlflow.search_runs(
        experiment_names=["t-retry"], run_view_type=ViewType.DELETED_ONLY, output_format="list"
    )
    assert [r.info.status for r in deleted] == ["FAILED", "FAILED"]  # restorable, not gone
    parent = next(
        r
        for r in mlflow.search_runs(experiment_names=["t-retry"], output_format="list")
        if r.data.tags.get(GROUP_TAG) == "retry" and r.data.tags.get(ROLE_TAG) == "pipeline"
    )
    assert parent.info.status == "FINISHED"


LOGGING_PROBE = """
import logging, warnings
from dldc.messages import configure_logging
configure_logging({verbosity})
logging.getLogger("dldc.iel.engine").info("resuming from shard 3")
logging.getLogger("dldc.iel.engine").debug("shard 3 digest ok")
logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
warnings.warn("Hint: Inferred schema contains integer column(s)", UserWarning)
logging.getLogger("dldc.export").warning("int8 graphs run on the CPU provider only")
"""


@pytest.mark.parametrize(
    ("verbosity", "shown", "hidden"),
    [
        (0, ["resuming from shard 3", "int8 graphs"], ["digest ok", "MLflow database", "Inferred schema"]),
        (-1, ["int8 graphs"], ["resuming", "digest ok", "MLflow database", "Inferred schema"]),
        (1, ["resuming", "digest ok", "MLflow database", "Inferred schema", "int8 graphs"], []),
    ],
)
def test_logging_shows_dldc_messages_and_hides_library_chatter(verbosity, shown, hidden):
    probe = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE.format(verbosity=verbosity)], capture_output=True, text=True, check=True
    )
    assert probe.stdout == ""
    for text in shown:
        assert text in probe.stderr
    for text in hidden:
        assert text not in probe.stderr


def test_ingest_prints_no_library_warnings(tmp_path, rsicd_root):
    (tmp_path / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    result = _dldc("ingest", "--root", str(rsicd_root), "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "INFO mlflow" not in result.stderr
