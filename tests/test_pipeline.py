"""The Kubeflow pipeline: compiles to IR YAML and runs end to end under kfp.local."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from stage_graph import (  # noqa: E402
    KFP_ONLY,
    REPO,
    dvc_edges,
    dvc_stages,
    kfp_edges,
    kfp_task_specs,
    kfp_tasks,
    stage_of,
)


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
    # Later pods get only their input artifacts, so in the pipeline segment reads SynthRS from ingest's copy
    # and promote takes the base (`dvc repro` reads synth's folder, and the base the adapter records).
    assert kfp_edges(spec) - {("ingest", "segment"), ("build_base", "promote")} == dvc_edges(stages) - {
        ("synth", "segment")
    }
    specs = kfp_task_specs(spec)
    loops = {name: task["parameterIterator"]["items"]["inputParameter"]
             for name, (task, _) in specs.items() if "parameterIterator" in task}  # fmt: skip
    assert sorted(loops.values()) == ["pipelinechannel--plan-parts-Output", "pipelinechannel--select_rows"]


def test_tasks_run_only_where_a_run_needs_them(tmp_path):
    """SynthRS only without a dataset, the demo base only without a named one, trials only in a trial mode,
    nothing after selection with train_models false."""
    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO)
    specs = kfp_task_specs(next(yaml.safe_load_all(out.read_text())))

    def param(name):
        return f"inputs.parameter_values['pipelinechannel--{name}']"

    no_dataset, no_base = f"{param('dataset_uri')} == ''", f"{param('base_model')} == ''"
    training, loop = f"{param('train_models')} == true", f"{param('select_mode')} != 'proxy'"
    conditions = {name: conds for name, (_, conds) in specs.items()}
    assert conditions["synth"] == [no_dataset] and conditions["ingest"] == [no_dataset]
    assert conditions["ingest-2"] == [f"!({no_dataset})"]
    assert conditions["build-base"] == [training, no_base] and conditions["name-base"] == [training, f"!({no_base})"]
    assert conditions["select-trial"] == [training, loop] and conditions["select-2"] == [training, f"!({loop})"]
    assert conditions["segment"] == [training, no_dataset]
    assert conditions["select-3"] == conditions["report-2"] == conditions["export-dataset-2"] == [f"!({training})"]
    always = {"train-scorer", "plan-parts", "score-part", "gather-scores", "caption", "export-scorer"}
    assert all(conditions[name] == [] for name in always)
    # With a dataset and a base given (the paper profile's use), no SynthRS or demo-base task can run.
    reachable = [name for name, conds in conditions.items() if no_dataset not in conds and no_base not in conds]
    assert not {"synth", "build-base"} & set(reachable)


def test_compiled_spec_matches_the_golden_file(tmp_path):
    """KFP's own way to test a pipeline: compile, strip the SDK version, compare with the checked-in spec.

    A change to a component, the pipeline or resources.json changes this file: look at the diff, then
    regenerate it with ``DLDC_UPDATE_GOLDEN=1 pytest tests/test_pipeline.py -k golden`` and commit it.
    """
    import difflib
    import re

    out = tmp_path / "dldc.pipeline.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLDC_")}  # the defaults, not this shell's
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO, env=env)
    compiled = re.sub(r"(?m)^sdkVersion: .*$", "sdkVersion: <kfp>", out.read_text())
    golden = REPO / "tests" / "golden" / "dldc_pipeline.yaml"
    if os.environ.get("DLDC_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(compiled)
    diff = list(difflib.unified_diff(golden.read_text().splitlines(), compiled.splitlines(), "golden", "compiled",
                                     lineterm="", n=1))  # fmt: skip
    assert not diff, "compiled pipeline differs from tests/golden/dldc_pipeline.yaml:\n" + "\n".join(diff[:60])


def test_compiled_tasks_are_placed_as_resources_json_says(tmp_path):
    """Pods that schedule: requests and limits everywhere, GPU tasks with the CUDA image and a toleration."""
    import re

    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO)
    spec, platform = yaml.safe_load_all(out.read_text())
    placement = json.loads((REPO / "pipelines" / "resources.json").read_text())
    wanted_gpu = {f"exec-{name}" for name, task in placement["tasks"].items() if task.get("gpu")}
    executors = spec["deploymentSpec"]["executors"]
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = {name for name, e in executors.items() if e["container"]["resources"].get("accelerator")}
    assert {re.sub(r"-\d+$", "", name) for name in gpu} == wanted_gpu and "exec-export-scorer" not in gpu
    for name, executor in executors.items():
        container = executor["container"]
        assert {"resourceCpuLimit", "resourceMemoryLimit", "resourceCpuRequest"} <= set(container["resources"]), name
        assert container["image"] == ("dldc:0.1.0-cuda" if name in gpu else "dldc:0.1.0-cpu"), name
        if name in gpu:
            assert kubernetes[name]["tolerations"] == placement["gpu"]["tolerations"], name
    assert kubernetes["exec-finetune"]["activeDeadlineSeconds"] == str(placement["tasks"]["finetune"]["timeout_s"])
    tasks = {name: task for name, (task, _) in kfp_task_specs(spec).items()}
    assert tasks["finetune-2"]["retryPolicy"]["maxRetryCount"] == placement["tasks"]["finetune"]["retries"]
    assert tasks["promote"]["cachingOptions"] == {}  # never cached: the registry moves between runs
    assert all(tasks[name]["cachingOptions"] == {"enableCache": True} for name in ("ingest", "caption", "select"))
    (trials,) = [task for task in tasks.values() if "select_rows" in str(task.get("parameterIterator"))]
    assert trials["iteratorPolicy"]["parallelismLimit"] == placement["parallelism"]["select-trial"]
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
    # The volume a dataset_uri folder lives on, and the object store's credentials: only ingest reads them
    # (it copies the dataset into its manifest artifact).
    env = {**os.environ, "DLDC_DATA_PVC": "rs-data", "DLDC_DATA_SECRET": "rs-s3"}
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO, env=env)
    spec, platform = yaml.safe_load_all(out.read_text())
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {name: e["pvcMount"] for name, e in kubernetes.items() if e.get("pvcMount")}
    (reader,) = mounted
    assert reader == "exec-ingest-2"  # the ingest of a given dataset, not of SynthRS
    assert [m["mountPath"] for m in mounted[reader]] == ["/data"]
    assert [s["secretName"] for s in kubernetes[reader]["secretAsEnv"]] == ["rs-s3"]


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
                   "--run-name", "demo", "--param", "dataset_uri=s3://rs-data/rsicd", "--param", "profile=paper",
                   "--param", "base_model=stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe",
                   "--param", "select_ratios=[0.0, 0.2]"]  # fmt: skip
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
    assert run["runtime_config"]["parameters"] == {
        "dataset_uri": "s3://rs-data/rsicd", "profile": "paper",
        "base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5@451f4fe", "select_ratios": [0.0, 0.2],
    }  # fmt: skip
    tasks = {name: task for name, (task, _) in kfp_task_specs(run["pipeline_spec"]["pipeline_spec"]).items()}
    assert tasks["promote"]["cachingOptions"] == {} and tasks["ingest-2"]["cachingOptions"] == {"enableCache": True}


def test_score_parts_are_planned_from_the_data():
    import types

    from components.score import plan_parts

    def plan(pairs, count=0, part_pairs=50000, max_parts=100):
        counts = types.SimpleNamespace(metadata={"kept_pairs": pairs})
        return plan_parts.python_func(counts=counts, count=count, part_pairs=part_pairs, max_parts=max_parts)

    assert plan(9300, part_pairs=465) == [f"{i}/20" for i in range(20)]
    assert plan(9301, part_pairs=465)[-1] == "20/21"
    assert plan(2000) == ["0/1"]  # the demo: one part
    assert plan(10**6) == [f"{i}/20" for i in range(20)]  # a million pairs: 20 parts of 50,000
    assert len(plan(10**8)) == 100  # capped: gather collects one artifact per part
    assert plan(2000, count=3) == ["0/3", "1/3", "2/3"] and plan(2, count=5) == ["0/2", "1/2"]
    with pytest.raises(ValueError, match="score_part_pairs >= 1"):
        plan(10, part_pairs=0)
