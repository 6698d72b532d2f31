"""The dldc Kubeflow pipeline: synth → ingest → train-scorer → score (fanned out) → gather → caption →
build-base → select-trial (fanned out over ratios) → select → export-dataset (the cleaned set) and finetune
(raw, clean, global) → generate → evaluate → promote and report (the cleaning report), and segment
(downstream segmentation) after evaluate.

Compile with `python -m pipelines compile --out dldc.pipeline.yaml`, or run locally with
`kfp.local` (see tests/test_pipeline.py). Later stages attach after `gather_scores`.
"""

import json
import os
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.build_base import build_base
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


@dsl.pipeline(name="dldc", description="Dual Loop Data Cleaning for remote-sensing text-to-image data.")
def dldc_pipeline(
    n_images: int = 400,
    size: int = 64,
    noise_rate: float = 0.3,
    seed: int = 0,
    score_parts: int = 2,
    extra_scorers: list = [],  # noqa: B006 - KFP reads the default as the parameter's default value
    settings: list = [],  # noqa: B006
    caption_backends: list = ["mask2text:synthrs", "retrieval"],  # noqa: B006
    caption_rounds: int = 2,
    export_precision: str = "none",
    select_ratios: list = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # noqa: B006
):
    """SynthRS → ingest → in-domain scorer → scoring over `score_parts` slices → fused scores.

    `settings` are `key=value` overrides passed to every stage (`dldc -S`); `extra_scorers`
    are scorer specs (e.g. `open_clip:ViT-L-14:openai`) scored beside the in-domain model;
    `caption_backends` and `caption_rounds` drive the EGL loop (`dldc caption`) after scoring;
    `export_precision` (`fp32`, `fp16` or `int8`; default `none`) exports the in-domain scorer to
    ONNX behind the parity gate before scoring, and the score parts then run the export.
    Then the dual loop: `build_base` (the demo's tiny Stable Diffusion), one `select_trial` per ratio of
    `select_ratios` (ParallelFor, GPU), `select` (r* per scene), LoRA fine-tunes on the raw, per-scene
    cleaned and global-ratio manifests, generation, evaluation and promotion of the clean adapter.
    """
    synth_task = _place(
        synth(
            n_images=n_images, size=size, noise_rate=noise_rate, seed=seed, settings=settings
        ),
        "synth",
    )
    ingest_task = _place(
        ingest(
            dataset=synth_task.outputs["dataset"], dataset_format="karpathy", settings=settings
        ),
        "ingest",
    )
    scorer_task = _place(
        train_scorer(manifest=ingest_task.outputs["manifest"], settings=settings),
        "train-scorer",
    )
    export_task = _place(
        export_scorer(
            scorer=scorer_task.outputs["scorer"],
            manifest=ingest_task.outputs["manifest"],
            precision=export_precision,
            settings=settings,
        ),
        "export-scorer",
    )
    plan = _place(plan_parts(count=score_parts), "plan-parts")
    with dsl.ParallelFor(plan.output, parallelism=RESOURCES["parallelism"]["score-part"]) as part:
        part_task = _place(
            score_part(
                manifest=ingest_task.outputs["manifest"],
                scorer=scorer_task.outputs["scorer"],
                exported=export_task.outputs["exported"],
                part=part,
                extra_scorers=extra_scorers,
                settings=settings,
            ),
            "score-part",
        )
    gather_task = _place(
        gather_scores(
            parts=dsl.Collected(part_task.outputs["scores"]), settings=settings
        ),
        "gather-scores",
    )
    # EGL: layout descriptions for the low-scoring pairs, judged by the same in-domain scorer.
    caption_task = _place(
        caption(
            manifest=ingest_task.outputs["manifest"],
            scores=gather_task.outputs["scores"],
            scorer=scorer_task.outputs["scorer"],
            backends=caption_backends,
            rounds=caption_rounds,
            settings=settings,
        ),
        "caption",
    )

    # Dual loop: one short LoRA per cleaning ratio (every scene cleaned at it), judged per scene on
    # held-out prompts; `select` picks r* per scene and writes the cleaned manifests.
    base_task = _place(
        build_base(
            scorer=scorer_task.outputs["scorer"], settings=settings
        ),
        "build-base",
    )
    with dsl.ParallelFor(select_ratios, parallelism=RESOURCES["parallelism"]["select-trial"]) as ratio:
        trial_task = _place(
            select_trial(
                captions=caption_task.outputs["captions"],
                scorer=scorer_task.outputs["scorer"],
                base_model=base_task.outputs["base_model"],
                ratio=ratio,
                settings=settings,
            ),
            "select-trial",
        )
    select_task = _place(
        select(
            captions=caption_task.outputs["captions"],
            trials=dsl.Collected(trial_task.outputs["trial"]),
            ratios=select_ratios,
            settings=settings,
        ),
        "select",
    )
    # The cleaned dataset itself, in the format it came in, with every pair's provenance.
    _place(
        export_dataset(
            manifest=ingest_task.outputs["manifest"],
            captions=caption_task.outputs["captions"],
            selection=select_task.outputs["selection"],
            settings=settings,
        ),
        "export-dataset",
    )
    # The three arms of the comparison, same seeds: raw (no cleaning), clean (per-scene r*), global (one r).
    adapters = {}
    for arm, source, manifest_file in (
        ("raw", ingest_task.outputs["manifest"], "manifest.parquet"),
        ("clean", select_task.outputs["selection"], "cleaned_manifest.parquet"),
        ("global", select_task.outputs["selection"], "global/cleaned_manifest.parquet"),
    ):
        adapters[arm] = _place(
            finetune(
                manifest=source,
                base_model=base_task.outputs["base_model"],
                manifest_file=manifest_file,
                settings=settings,
            ),
            f"finetune-{arm}",
        )
    generate_task = _place(
        generate(
            manifest=ingest_task.outputs["manifest"],
            base_model=base_task.outputs["base_model"],
            raw_adapter=adapters["raw"].outputs["adapter"],
            clean_adapter=adapters["clean"].outputs["adapter"],
            global_adapter=adapters["global"].outputs["adapter"],
            settings=settings,
        ),
        "generate",
    )
    evaluate_task = _place(
        evaluate(
            generations=generate_task.outputs["generations"],
            manifest=ingest_task.outputs["manifest"],
            scorer=scorer_task.outputs["scorer"],
            settings=settings,
        ),
        "evaluate",
    )
    _place(
        promote(
            evaluation=evaluate_task.outputs["evaluation"],
            adapter=adapters["clean"].outputs["adapter"],
            candidate_arm="clean",
            settings=settings,
        ),
        "promote",
    ).set_caching_options(False)  # the registry changes between runs: a cached decision would be stale
    # The cleaning report: ratios and cuts per scene with thumbnails, EGL repairs, rejects, sample grids, metrics.
    _place(
        report(
            manifest=ingest_task.outputs["manifest"],
            captions=caption_task.outputs["captions"],
            selection=select_task.outputs["selection"],
            generations=generate_task.outputs["generations"],
            evaluation=evaluate_task.outputs["evaluation"],
            settings=settings,
        ),
        "report",
    )
    # Downstream proof: a segmenter trained on real SynthRS masks vs. + synthetic images of each arm
    # (both mask protocols, same budget); after `evaluate` so the cheap metrics come first.
    _place(
        segment(
            dataset=synth_task.outputs["dataset"],
            base_model=base_task.outputs["base_model"],
            raw_adapter=adapters["raw"].outputs["adapter"],
            clean_adapter=adapters["clean"].outputs["adapter"],
            global_adapter=adapters["global"].outputs["adapter"],
            settings=settings,
        ).after(evaluate_task),
        "segment",
    )


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline's IR YAML to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dldc_pipeline, package_path=str(out))
    return out
