"""The dldc Kubeflow pipeline: ingest (your dataset, or SynthRS from synth) → train-scorer → score (fanned
out) → gather → caption → select (proxy, or the dual loop: build-base or name-base → select-trial fanned out
over ratios) → export-dataset (the cleaned set) and finetune (raw, clean, global) → generate → evaluate →
promote and report (the cleaning report), and segment (downstream segmentation, SynthRS) after evaluate.
Conditions (dsl.If) skip what a run does not need: synth when a dataset is given, build-base when a base
is named, everything after selection with train_models false.

Compile with `python -m pipelines compile --out dldc.pipeline.yaml`, or run locally with
`kfp.local` (see tests/test_pipeline.py). Later stages attach after `gather_scores`.
"""

import json
import os
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.build_base import build_base, name_base
from components.caption import caption
from components.evaluate import evaluate
from components.export_dataset import export_dataset
from components.export_scorer import export_scorer
from components.finetune import finetune
from components.generate import generate
from components.images import CPU_IMAGE, GPU_IMAGE, GPU_NODE_SELECTOR, GPU_RESOURCE
from components.ingest import ingest
from components.promote import promote
from components.report import report
from components.score import gather_scores, plan_parts, score_part
from components.segment import segment
from components.select import select, select_trial
from components.synth import synth
from components.train_scorer import train_scorer
from dldc.tracking import RUN_GROUP_ENV

RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # KFP's label on every pod of a run
RESOURCES = json.loads(Path(os.environ.get("DLDC_PIPELINE_RESOURCES", Path(__file__).with_name("resources.json")))
                       .read_text(encoding="utf-8"))  # fmt: skip


def _place(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Name a task and place it as resources.json says: CPU/memory, GPU, image, retries and timeout.

    ``name`` is the task's key in resources.json (``finetune-clean`` uses ``finetune``'s entry). A GPU
    task runs the CUDA image with one accelerator, the GPU node selector and the tolerations; the
    others run the CPU image and ask for no GPU.
    """
    key = name if name in RESOURCES["tasks"] else name.rsplit("-", 1)[0]
    place = {**RESOURCES["defaults"], **RESOURCES["tasks"][key]}
    task.set_display_name(name)
    # The MLflow parent run of this pipeline run, from the pod's run-id label: an input parameter
    # would put the job id into KFP's cache key, and no task could ever be reused from the cache.
    kubernetes.use_field_path_as_env(task, env_name=RUN_GROUP_ENV, field_path=RUN_ID_FIELD)
    # The tracking server's URI (and credentials) from a secret: never a parameter shown in the UI.
    secret = os.environ.get("DLDC_TRACKING_SECRET") or RESOURCES["tracking_secret"]["name"]
    if secret:
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=RESOURCES["tracking_secret"]["env"])
    task.set_cpu_request(place["cpu_request"]).set_cpu_limit(place["cpu_limit"])
    task.set_memory_request(place["memory_request"]).set_memory_limit(place["memory_limit"])
    if place["retries"]:
        task.set_retry(num_retries=place["retries"], backoff_duration=f"{place['backoff_s']}s", backoff_factor=2.0)
    if place["timeout_s"]:
        kubernetes.set_timeout(task, seconds=place["timeout_s"])
    if not place["gpu"]:
        return task.set_container_image(CPU_IMAGE)
    gpu = RESOURCES["gpu"]
    task.set_container_image(GPU_IMAGE)
    task.set_accelerator_type(GPU_RESOURCE or gpu["resource"]).set_accelerator_limit(1)
    selector = GPU_NODE_SELECTOR or gpu["node_selector"]
    if selector:
        label, _, value = selector.partition("=")
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in gpu["tolerations"]:
        kubernetes.add_toleration(task, **toleration)
    volume = RESOURCES["weights_volume"]
    claim = os.environ.get("DLDC_WEIGHTS_PVC") or volume["pvc"]
    if claim:  # the models the GPU tasks load, pre-staged: hub ids resolve offline from HF_HOME
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=volume["mount_path"])
        task.set_env_variable("HF_HOME", f"{volume['mount_path']}/hf").set_env_variable("HF_HUB_OFFLINE", "1")
    return task


def _mount_dataset_volume(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The volume a `dataset_uri` folder lives on, and the object store's credentials, for the ingest task."""
    volume = RESOURCES["data_volume"]
    claim = os.environ.get("DLDC_DATA_PVC") or volume["pvc"]
    if claim:
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=volume["mount_path"])
    secret = os.environ.get("DLDC_DATA_SECRET") or RESOURCES["data_secret"]["name"]
    if secret:
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=RESOURCES["data_secret"]["env"])
    return task


def _clean_dataset(manifest, captions, selection, settings: list, profile: str, generations=None, evaluation=None):
    """The cleaned dataset (in the format it came in, with every pair's provenance) and the cleaning report:
    ratios and cuts per scene with thumbnails, EGL repairs, rejects and, after fine-tuning, sample grids and
    metrics."""
    _place(
        export_dataset(manifest=manifest, captions=captions, selection=selection, settings=settings, profile=profile),
        "export-dataset",
    )
    results = {} if generations is None else {"generations": generations, "evaluation": evaluation}
    _place(
        report(manifest=manifest, captions=captions, selection=selection, settings=settings, profile=profile,
               **results),  # fmt: skip
        "report",
    )


@dsl.pipeline(name="dldc", description="Dual Loop Data Cleaning for remote-sensing text-to-image data.")
def dldc_pipeline(
    dataset_uri: str = "",
    dataset_format: str = "karpathy",
    profile: str = "demo",
    base_model: str = "",
    train_models: bool = True,
    select_mode: str = "calibrate",
    n_images: int = 400,
    size: int = 64,
    noise_rate: float = 0.3,
    seed: int = 0,
    score_parts: int = 0,
    score_part_pairs: int = 50000,
    extra_scorers: list = [],  # noqa: B006 - KFP reads the default as the parameter's default value
    settings: list = [],  # noqa: B006
    caption_backends: list = [],  # noqa: B006
    caption_rounds: int = 2,
    export_precision: str = "none",
    select_ratios: list = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # noqa: B006
    select_rows: list = [0, 1, 2, 3, 4, 5],  # noqa: B006
):
    """Your dataset (or SynthRS) → ingest → in-domain scorer → scores → EGL captions → r* per scene → the
    cleaned dataset and its report, then LoRA arms → generation → evaluation → promotion.

    `dataset_uri`: the dataset to clean, in `dataset_format` (`karpathy` or `folder`): a folder on the
    mounted data volume (resources.json `data_volume`, `DLDC_DATA_PVC`) or a URL ingest reads
    (`s3://bucket/rsicd`, `gs://...`; credentials from `data_secret`). Empty: SynthRS is generated
    (`n_images`, `size`, `noise_rate`, `seed`). `profile` is the settings profile of every stage
    (`demo`, `paper`, `rsicd-dev`, ...); `settings` are `key=value` overrides on top (`dldc -S`).
    `base_model`: the text-to-image base, `org/name[@revision]` (hub id, loaded from the weights volume
    when `HF_HUB_OFFLINE=1`), an absolute folder on that volume, or `models:/NAME@ALIAS`; empty: the
    demo's tiny base is trained (`build_base`). `train_models` false stops at the cleaned dataset and
    its report (selection by the proxy then, whatever `select_mode` says: the trials train models). `select_mode`:
    `proxy` ranks by the scores alone (on the grid `select_ratios`); `calibrate` (six levels of the
    proxy's ratios), `attribute` (a screening design over the scenes: 12 rows for 10 scenes, so
    `select_rows` 0..11) and `loop` (one trial per ratio of `select_ratios`) run one `select_trial` per
    slot of `select_rows` (ParallelFor, GPU; slots past the plan finish at once). `extra_scorers` are
    scorer specs scored beside the in-domain model;
    `caption_backends` (empty: the profile's) and `caption_rounds` drive the EGL loop;
    `export_precision` (`fp32`, `fp16` or `int8`; default `none`) exports the in-domain scorer to ONNX
    behind the parity gate, and the score parts then run the export. Scoring fans out over
    `score_parts` slices of the manifest; 0 (the default) plans one per `score_part_pairs` pairs, at
    most resources.json's `fan_out.max_parts`.
    """
    common = {"settings": settings, "profile": profile}
    with dsl.If(dataset_uri == "", name="synthrs"):
        synth_task = _place(synth(n_images=n_images, size=size, noise_rate=noise_rate, seed=seed, **common), "synth")
        synth_ingest = _place(ingest(dataset=synth_task.outputs["dataset"], dataset_format="karpathy", **common),
                              "ingest")  # fmt: skip
    with dsl.Else(name="your-dataset"):
        given_ingest = _mount_dataset_volume(
            _place(ingest(dataset_uri=dataset_uri, dataset_format=dataset_format, **common), "ingest")
        )
    # Every later task gets this one artifact, which carries the dataset's images (ingest copies them).
    manifest = dsl.OneOf(synth_ingest.outputs["manifest"], given_ingest.outputs["manifest"])
    counts = dsl.OneOf(synth_ingest.outputs["counts"], given_ingest.outputs["counts"])
    scorer_task = _place(train_scorer(manifest=manifest, **common), "train-scorer")
    export_task = _place(
        export_scorer(scorer=scorer_task.outputs["scorer"], manifest=manifest, precision=export_precision, **common),
        "export-scorer",
    )
    plan = _place(plan_parts(counts=counts, count=score_parts, part_pairs=score_part_pairs,
                             max_parts=RESOURCES["fan_out"]["max_parts"]), "plan-parts")  # fmt: skip
    with dsl.ParallelFor(plan.output, parallelism=RESOURCES["parallelism"]["score-part"]) as part:
        part_task = _place(
            score_part(manifest=manifest, scorer=scorer_task.outputs["scorer"],
                       exported=export_task.outputs["exported"], part=part, extra_scorers=extra_scorers,
                       **common),  # fmt: skip
            "score-part",
        )
    gather_task = _place(gather_scores(parts=dsl.Collected(part_task.outputs["scores"]), **common), "gather-scores")
    # EGL: layout descriptions for the low-scoring pairs, judged by the same in-domain scorer.
    caption_task = _place(
        caption(manifest=manifest, scores=gather_task.outputs["scores"], scorer=scorer_task.outputs["scorer"],
                backends=caption_backends, rounds=caption_rounds, **common),  # fmt: skip
        "caption",
    )
    captions = caption_task.outputs["captions"]

    with dsl.If(train_models == True, name="train-models"):  # noqa: E712 - a KFP condition, not Python truth
        with dsl.If(base_model == "", name="demo-base"):
            built = _place(build_base(scorer=scorer_task.outputs["scorer"], **common), "build-base")
        with dsl.Else(name="named-base"):
            named = _place(name_base(base=base_model, **common), "name-base")
        base = dsl.OneOf(built.outputs["base_model"], named.outputs["base_model"])
        # Dual loop: one short LoRA per row of the mode's trial plan (each scene cleaned at the row's ratio),
        # judged on held-out prompts; `select` picks r* per scene and writes the cleaned manifests.
        with dsl.If(select_mode != "proxy", name="dual-loop"):
            with dsl.ParallelFor(select_rows, parallelism=RESOURCES["parallelism"]["select-trial"]) as row:
                trial_task = _place(
                    select_trial(captions=captions, scorer=scorer_task.outputs["scorer"], base_model=base,
                                 row=row, mode=select_mode, ratios=select_ratios, **common),  # fmt: skip
                    "select-trial",
                )
            looped = _place(
                select(captions=captions, trials=dsl.Collected(trial_task.outputs["trial"]), ratios=select_ratios,
                       mode=select_mode, rows=select_rows, **common),  # fmt: skip
                "select",
            )
        with dsl.Else(name="by-scores"):
            ranked = _place(select(captions=captions, ratios=select_ratios, mode=select_mode, **common), "select")
        selection = dsl.OneOf(looped.outputs["selection"], ranked.outputs["selection"])
        # The three arms of the comparison, same seeds: raw (no cleaning), clean (per-scene r*), global (one r).
        adapters = {}
        for arm, source, manifest_file in (
            ("raw", manifest, "manifest.parquet"),
            ("clean", selection, "cleaned_manifest.parquet"),
            ("global", selection, "global/cleaned_manifest.parquet"),
        ):
            adapters[arm] = _place(
                finetune(manifest=source, base_model=base, manifest_file=manifest_file, **common), f"finetune-{arm}"
            )
        arm_adapters = {f"{arm}_adapter": task.outputs["adapter"] for arm, task in adapters.items()}
        generate_task = _place(generate(manifest=manifest, base_model=base, **arm_adapters, **common), "generate")
        evaluate_task = _place(
            evaluate(generations=generate_task.outputs["generations"], manifest=manifest,
                     scorer=scorer_task.outputs["scorer"], **common),  # fmt: skip
            "evaluate",
        )
        _place(
            promote(evaluation=evaluate_task.outputs["evaluation"], adapter=adapters["clean"].outputs["adapter"],
                    base_model=base, candidate_arm="clean", **common),  # fmt: skip
            "promote",
        ).set_caching_options(False)  # the registry changes between runs: a cached decision would be stale
        _clean_dataset(manifest, captions, selection, generations=generate_task.outputs["generations"],
                       evaluation=evaluate_task.outputs["evaluation"], **common)  # fmt: skip
        # Downstream proof on SynthRS (its masks travel in ingest's copy): a segmenter trained on real masks
        # vs. + synthetic images of each arm (both mask protocols, same budget); after `evaluate` so the
        # cheap metrics come first.
        with dsl.If(dataset_uri == "", name="segment-synthrs"):
            _place(
                segment(dataset=manifest, dataset_folder="dataset", base_model=base, **arm_adapters,
                        **common).after(evaluate_task),  # fmt: skip
                "segment",
            )
    with dsl.Else(name="clean-only"):
        only = _place(select(captions=captions, ratios=select_ratios, mode="proxy", **common), "select")
        _clean_dataset(manifest, captions, only.outputs["selection"], **common)


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline's IR YAML to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dldc_pipeline, package_path=str(out))
    return out
