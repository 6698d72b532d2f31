"""The Kubeflow pipeline: compiles to IR YAML and runs end to end under kfp.local."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from dldc.tracking import ROLE_TAG

sys.path.insert(0, str(Path(__file__).parent))
from stage_graph import KFP_ONLY, REPO, dvc_edges, dvc_stages, kfp_edges, kfp_tasks, stage_of  # noqa: E402


def test_dldc_never_imports_kfp():
    code = "import sys, dldc.cli, dldc.stages, dldc.data.ingest, dldc.data.synthrs; print('kfp' in sys.modules)"
    out = subprocess.run(["python3", "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"


def test_pipeline_compiles_to_ir_yaml_with_the_stage_graph_of_dvc_yaml(tmp_path):
    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO)
    spec = next(yaml.safe_load_all(out.read_text()))
    # The same stages, wired the same way, as `dvc repro` runs (tests/stage_graph.py reads both).
    stages = dvc_stages()
    kfp = {stage_of(task) for task in kfp_tasks(spec)}
    assert kfp - KFP_ONLY == {stage_of(name) for name in stages}
    # `segment` runs after `evaluate` in the pipeline only to keep the two GPU tasks apart.
    assert kfp_edges(spec) - {("evaluate", "segment")} == dvc_edges(stages)
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["for-loop-1"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-parts-Output"
    assert tasks["for-loop-2"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--select_ratios"


def test_compiled_tasks_are_placed_as_resources_json_says(tmp_path):
    """Pods that schedule: requests and limits everywhere, GPU tasks with the CUDA image and a toleration."""
    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO)
    spec, platform = yaml.safe_load_all(out.read_text())
    placement = json.loads((REPO / "pipelines" / "resources.json").read_text())
    wanted_gpu = {f"exec-{name}" for name, task in placement["tasks"].items() if task.get("gpu")}
    executors = spec["deploymentSpec"]["executors"]
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = {name for name, e in executors.items() if e["container"]["resources"].get("accelerator")}
    assert {name.rstrip("-23") for name in gpu} == wanted_gpu and "exec-export-scorer" not in gpu
    for name, executor in executors.items():
        container = executor["container"]
        assert {"resourceCpuLimit", "resourceMemoryLimit", "resourceCpuRequest"} <= set(container["resources"]), name
        assert container["image"] == ("dldc:0.1.0-cuda" if name in gpu else "dldc:0.1.0-cpu"), name
        if name in gpu:
            assert kubernetes[name]["tolerations"] == placement["gpu"]["tolerations"], name
    assert kubernetes["exec-finetune"]["activeDeadlineSeconds"] == str(placement["tasks"]["finetune"]["timeout_s"])
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["finetune-2"]["retryPolicy"]["maxRetryCount"] == placement["tasks"]["finetune"]["retries"]
    assert tasks["promote"]["cachingOptions"] == {}  # never cached: the registry moves between runs
    assert all(tasks[name]["cachingOptions"] == {"enableCache": True} for name in ("ingest", "caption", "select"))
    assert tasks["for-loop-2"]["iteratorPolicy"]["parallelismLimit"] == placement["parallelism"]["select-trial"]
    # The run group reaches tracking from the pod's run-id label, never as an input: an input with the
    # job id would be part of every task's cache key, and nothing could be reused from the cache.
    assert "pipeline_job_uuid" not in out.read_text()
    for name in executors:
        assert kubernetes[name]["fieldPathAsEnv"] == [
            {"name": "DLDC_RUN_GROUP", "fieldPath": "metadata.labels['pipeline/runid']"}
        ], name
    # With a tracking secret, every task reads the server's URI from it (not a parameter the UI shows).
    env = {**os.environ, "DLDC_TRACKING_SECRET": "dldc-mlflow"}
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO, env=env)
    kubernetes = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in kubernetes.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "dldc-mlflow"
        assert secret["keyToEnv"] == [{"secretKey": "uri", "envVar": "MLFLOW_TRACKING_URI"}]
    # A volume of pre-staged weights on every GPU task, with the Hugging Face cache pointed at it.
    env = {**os.environ, "DLDC_WEIGHTS_PVC": "dldc-models"}
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO, env=env)
    spec, platform = yaml.safe_load_all(out.read_text())
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in spec["deploymentSpec"]["executors"].items():
        mounted = kubernetes[name].get("pvcMount", [])
        env_vars = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        if name in gpu:
            assert [m["mountPath"] for m in mounted] == ["/models"], name
            assert env_vars == {"HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "1"}, name
        else:
            assert mounted == [] and "HF_HOME" not in env_vars, name
    # One repository and tag name both images.
    env = {**os.environ, "DLDC_IMAGE_REPO": "registry.example.com/team/dldc", "DLDC_IMAGE_TAG": "0.2.0"}
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO, env=env)
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values()}
    assert images == {"registry.example.com/team/dldc:0.2.0-cpu", "registry.example.com/team/dldc:0.2.0-cuda"}


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local_and_logs_to_mlflow(tmp_path, mlflow_uri, monkeypatch, tiny_base):
    from kfp import local

    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    settings = [
        f"tracking.uri={mlflow_uri}",
        "tracking.experiment=t-kfp",
        "ingest.workers=1",
        "indomain.architecture=indomain-test",
        "indomain.folds=2",
        "indomain.epochs=1",
        "synth.scenes=[farmland, forest]",  # 10 images per scene: one in val (trials) and one in test
        *[f"base.{key}={value}" for key, value in tiny_base.items()],
        "finetune.resolution=16",
        "finetune.rank=4",
        "finetune.steps=2",
        "finetune.batch_size=4",
        "finetune.sample_steps=1",
        "generate.steps=1",
        "generate.batch_size=8",
        "generate.prompts_per_image=1",
        "evaluate.bootstrap=10",
        "evaluate.kid_subsets=2",
        "evaluate.kid_subset_size=4",
        "select.trial_steps=2",
        "select.trial_generate_steps=1",
        "select.trial_prompts_per_image=1",
        "segment.patch_size=32",
        "segment.widths=[4, 8]",
        "segment.steps=2",
        "segment.batch_size=4",
        "segment.eval_every=1",
        "segment.synthetic_per_arm=4",
        "segment.gen_steps=1",
        "segment.bootstrap=10",
    ]
    dldc_pipeline(
        n_images=20, size=32, noise_rate=0.2, seed=1, score_parts=2, settings=settings, caption_rounds=1,
        select_ratios=[0.0, 0.3], export_precision="fp32",  # the IEL runs on the ONNX export of the scorer
    )
    manifests = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" not in str(p)]
    assert len(manifests) == 1
    frame = pd.read_parquet(manifests[0])
    assert len(frame) == 100 and frame["scene"].nunique() == 2
    scores = [p for p in (tmp_path / "kfp-root").rglob("scores.parquet") if "gather-scores" in str(p)]
    assert len(scores) == 1
    fused = pd.read_parquet(scores[0])
    (score_report,) = [p for p in (tmp_path / "kfp-root").rglob("score.json") if "gather-scores" in str(p)]
    scorer = json.loads(score_report.read_text())["scorers"][0]
    assert scorer["name"] == "indomain" and scorer["scorer_id"].startswith("onnx-fp32:") and scorer["scene_head"]
    assert sorted(fused["pair_id"]) == sorted(frame["pair_id"])
    assert fused["indomain"].between(-1, 1).all() and fused["scene_percentile"].between(0, 1).all()
    captioned = [p for p in (tmp_path / "kfp-root").rglob("manifest.parquet") if "caption" in str(p)]
    assert len(captioned) == 1
    repaired = pd.read_parquet(captioned[0])
    assert sorted(repaired["pair_id"]) == sorted(frame["pair_id"])
    assert repaired["caption_source"].str.match(r"^(original|egl:(mask2text|retrieval):.+)$").all()
    (selection_file,) = (tmp_path / "kfp-root").rglob("selection.json")
    selection = json.loads(selection_file.read_text())
    assert selection["mode"] == "loop" and set(selection["trials"]) == {"0", "0.3"}
    assert set(selection["ratios"]) == {"farmland", "forest"}
    (evaluation,) = [p for p in (tmp_path / "kfp-root").rglob("evaluate.json") if "select-trial" not in str(p)]
    assert set(json.loads(evaluation.read_text())["arms"]) == {"base", "raw", "clean", "global", "real"}
    (segmented,) = (tmp_path / "kfp-root").rglob("segment.json")
    assert set(json.loads(segmented.read_text())) == {"real"} | {
        f"{p}.{a}" for p in ("pseudo-label", "layout-prompt") for a in ("base", "raw", "clean", "global")
    }

    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("t-kfp")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
    assert len(parents) == 1
    # One finished MLflow run per task of the compiled pipeline (each loop body once per item: two
    # score parts, two ratios); planning the parts runs no stage.
    from kfp import compiler

    compiler.Compiler().compile(dldc_pipeline, package_path=str(tmp_path / "p.yaml"))
    tasks = kfp_tasks(next(yaml.safe_load_all((tmp_path / "p.yaml").read_text())))
    names = {"score_part": "score", "gather_scores": "gather_scores", "plan_parts": None}
    expected = [names.get(base, stage_of(base)) for task in tasks if (base := task.replace("-", "_"))]
    expected = [name for name in expected if name] + ["score", "select_trial"]  # the second part and ratio
    assert stages == sorted(expected)
    assert {stage_of(name) for name in stages} == {stage_of(name) for name in dvc_stages()} | {"export_scorer"}
    assert all(r.info.status == "FINISHED" for r in runs if r.data.tags.get(ROLE_TAG) == "stage")


def test_submit_uploads_the_compiled_pipeline_to_the_kfp_api(tmp_path):
    """`python -m pipelines submit` against a local HTTP server that records the requests.

    Not a KFP backend (that needs Kubernetes): the server answers the four calls kfp.Client makes
    (health, find the experiment, create it, create the run), and the test checks what was sent.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    requests = []

    class Recorder(BaseHTTPRequestHandler):
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(("GET", self.path, None))
            self._reply({"experiments": []} if "/experiments" in self.path else {})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(("POST", self.path, body))
            if self.path.endswith("/experiments"):
                self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
            else:
                self._reply({"run_id": "run-1", "experiment_id": "exp-1", "display_name": body["display_name"]})

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        command = [sys.executable, "-m", "pipelines", "submit", "--host", f"http://127.0.0.1:{server.server_port}",
                   "--run-name", "demo", "--param", "n_images=40", "--param", "select_ratios=[0.0, 0.2]"]  # fmt: skip
        out = subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True).stdout
    finally:
        server.shutdown()
    assert "started run run-1" in out
    posts = {path: body for method, path, body in requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "dldc"
    run = posts["/apis/v2beta1/runs"]
    assert run["display_name"] == "demo" and run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "dldc"
    assert "platform_spec" in run["pipeline_spec"]  # the Kubernetes placement travels with the spec
    assert run["runtime_config"]["parameters"] == {"n_images": 40, "select_ratios": [0.0, 0.2]}
    tasks = run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks["promote"]["cachingOptions"] == {} and tasks["ingest"]["cachingOptions"] == {"enableCache": True}
