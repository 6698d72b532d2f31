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
    # The pipeline's segment reads SynthRS from ingest's copy (later pods get only the manifest artifact);
    # `dvc repro` reads synth's folder.
    assert kfp_edges(spec) - {("ingest", "segment")} == dvc_edges(stages) - {("synth", "segment")}
    specs = kfp_task_specs(spec)
    loops = {name: task["parameterIterator"]["items"]["inputParameter"]
             for name, (task, _) in specs.items() if "parameterIterator" in task}  # fmt: skip
    assert sorted(loops.values()) == ["pipelinechannel--plan-parts-Output", "pipelinechannel--select_ratios"]


def test_tasks_run_only_where_a_run_needs_them(tmp_path):
    """SynthRS only without a dataset, the demo base only without a named one, trials only in loop mode,
    nothing after selection with train_models false."""
    out = tmp_path / "dldc.pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], check=True, cwd=REPO)
    specs = kfp_task_specs(next(yaml.safe_load_all(out.read_text())))

    def param(name):
        return f"inputs.parameter_values['pipelinechannel--{name}']"

    no_dataset, no_base = f"{param('dataset_uri')} == ''", f"{param('base_model')} == ''"
    training, loop = f"{param('train_models')} == true", f"{param('select_mode')} == 'loop'"
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
    (trials,) = [task for task in tasks.values() if "select_ratios" in str(task.get("parameterIterator"))]
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


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local_and_logs_to_mlflow(tmp_path, mlflow_uri, monkeypatch, tiny_base):
    from pipelines import local
    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(tmp_path / "kfp-root")
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
    # Branches this run does not take: a given dataset's ingest, a named base, proxy selection, the clean-only end.
    skipped = {"ingest-2", "name-base", "select-2", "select-3", "export-dataset-2", "report-2"}
    ran = [task for task in tasks if task not in skipped]
    expected = [names.get(base, stage_of(base)) for task in ran if (base := task.replace("-", "_"))]
    expected = [name for name in expected if name] + ["score", "select_trial"]  # the second part and ratio
    assert stages == sorted(expected)
    assert {stage_of(name) for name in stages} == {stage_of(name) for name in dvc_stages()} | {"export_scorer"}
    assert all(r.info.status == "FINISHED" for r in runs if r.data.tags.get(ROLE_TAG) == "stage")


@pytest.mark.slow
def test_your_dataset_through_kfp_local_with_no_synthrs_task(tmp_path, mlflow_uri, monkeypatch, rsicd_root):
    """The RSICD subset as a user's dataset: ingest → train-scorer → score → select (proxy) → export, report."""
    from dldc.data.manifest import dataset_root, read_manifest
    from pipelines import local
    from pipelines.dldc_pipeline import dldc_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(tmp_path / "kfp-root")
    settings = [f"tracking.uri={mlflow_uri}", "tracking.experiment=t-kfp-rsicd", "ingest.workers=1",
                "indomain.architecture=indomain-test", "indomain.epochs=1"]  # fmt: skip
    dldc_pipeline(dataset_uri=str(rsicd_root), profile="rsicd-dev", train_models=False, select_mode="proxy",
                  caption_rounds=0, settings=settings)  # fmt: skip
    (run,) = (tmp_path / "kfp-root").iterdir()
    ran = {path.name for path in run.iterdir()}
    assert ran == {"ingest-2", "train-scorer", "export-scorer", "plan-parts", "for-loop-4-iteration-0",
                   "for-loop-4-iteration-1", "gather-scores", "caption", "select-3", "export-dataset-2", "report-2"}
    # The manifest artifact carries the dataset: the path it records resolves inside the artifact.
    manifest = run / "ingest-2" / "manifest" / "manifest.parquet"
    frame, meta = read_manifest(manifest)
    assert meta.root == "dataset" and meta.extra["source"] == str(rsicd_root) and frame["scene"].nunique() == 31
    assert all((dataset_root(manifest, meta) / image).is_file() for image in frame["image"].iloc[::500])
    selection = json.loads((run / "select-3" / "selection" / "selection.json").read_text())
    assert selection["mode"] == "proxy" and len(selection["ratios"]) == 31
    export = run / "export-dataset-2" / "dataset"
    kept = pd.read_parquet(export / "provenance.parquet")
    exported = json.loads((export / "dataset_rsicd.json").read_text())
    assert sum(len(entry["sentences"]) for entry in exported["images"]) == (kept["status"] == "kept").sum() > 0
    assert (run / "report-2" / "folder" / "index.html").is_file()
    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name("t-kfp-rsicd")
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    stages = sorted(r.info.run_name for r in runs if r.data.tags.get(ROLE_TAG) == "stage")
    # export-scorer ran as a no-op (export_precision none): no stage, no run.
    assert stages == sorted(["ingest", "train_scorer", "score", "score", "gather_scores", "caption", "select",
                             "export_dataset", "report"])  # fmt: skip


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
