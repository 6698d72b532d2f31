"""The dldc Kubeflow pipeline: synth → ingest → train-scorer → score (fanned out) → gather → caption →
build-base → select-trial (fanned out over ratios) → select → export-dataset (the cleaned set) and finetune
(raw, clean, global) → generate → evaluate → promote and report (the cleaning report), and segment
(downstream segmentation) after evaluate.

Compile with `python -m pipelines compile --out dldc.pipeline.yaml`, or run locally with
`kfp.local` (see tests/test_pipeline.py). Later stages attach after `gather_scores`.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.build_base import build_base
from components.caption import caption
from components.evaluate import evaluate
from components.export_dataset import export_dataset
from components.export_scorer import export_scorer
from components.finetune import finetune
from components.generate import generate
from components.images import GPU_NODE_SELECTOR, GPU_RESOURCE
from components.ingest import ingest
from components.promote import promote
from components.report import report
from components.score import gather_scores, plan_parts, score_part
from components.segment import segment
from components.select import select, select_trial
from components.synth import synth
from components.train_scorer import train_scorer


def _on_gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Request one GPU (and a node selector, when DLDC_GPU_NODE_SELECTOR=key=value is set)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    if GPU_NODE_SELECTOR:
        key, _, value = GPU_NODE_SELECTOR.partition("=")
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
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
    # One MLflow parent run per pipeline run: the stages share the job id as their run group.
    group = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    synth_task = synth(
        n_images=n_images, size=size, noise_rate=noise_rate, seed=seed, settings=settings, run_group=group
    ).set_display_name("synth")
    ingest_task = ingest(
        dataset=synth_task.outputs["dataset"], dataset_format="karpathy", settings=settings, run_group=group
    ).set_display_name("ingest")
    scorer_task = _on_gpu(
        train_scorer(manifest=ingest_task.outputs["manifest"], settings=settings, run_group=group)
    ).set_display_name("train-scorer")
    export_task = _on_gpu(
        export_scorer(
            scorer=scorer_task.outputs["scorer"],
            manifest=ingest_task.outputs["manifest"],
            precision=export_precision,
            settings=settings,
            run_group=group,
        )
    ).set_display_name("export-scorer")
    plan = plan_parts(count=score_parts).set_display_name("plan-parts")
    with dsl.ParallelFor(plan.output) as part:
        part_task = _on_gpu(
            score_part(
                manifest=ingest_task.outputs["manifest"],
                scorer=scorer_task.outputs["scorer"],
                exported=export_task.outputs["exported"],
                part=part,
                extra_scorers=extra_scorers,
                settings=settings,
                run_group=group,
            )
        ).set_display_name("score-part")
    gather_task = gather_scores(
        parts=dsl.Collected(part_task.outputs["scores"]), settings=settings, run_group=group
    ).set_display_name("gather-scores")
    # EGL: layout descriptions for the low-scoring pairs, judged by the same in-domain scorer.
    caption_task = _on_gpu(
        caption(
            manifest=ingest_task.outputs["manifest"],
            scores=gather_task.outputs["scores"],
            scorer=scorer_task.outputs["scorer"],
            backends=caption_backends,
            rounds=caption_rounds,
            settings=settings,
            run_group=group,
        )
    ).set_display_name("caption")

    # Dual loop: one short LoRA per cleaning ratio (every scene cleaned at it), judged per scene on
    # held-out prompts; `select` picks r* per scene and writes the cleaned manifests.
    base_task = build_base(
        scorer=scorer_task.outputs["scorer"], settings=settings, run_group=group
    ).set_display_name("build-base")
    with dsl.ParallelFor(select_ratios) as ratio:
        trial_task = _on_gpu(
            select_trial(
                captions=caption_task.outputs["captions"],
                scorer=scorer_task.outputs["scorer"],
                base_model=base_task.outputs["base_model"],
                ratio=ratio,
                settings=settings,
                run_group=group,
            )
        ).set_display_name("select-trial")
    select_task = select(
        captions=caption_task.outputs["captions"],
        trials=dsl.Collected(trial_task.outputs["trial"]),
        ratios=select_ratios,
        settings=settings,
        run_group=group,
    ).set_display_name("select")
    # The cleaned dataset itself, in the format it came in, with every pair's provenance.
    export_dataset(
        manifest=ingest_task.outputs["manifest"],
        captions=caption_task.outputs["captions"],
        selection=select_task.outputs["selection"],
        settings=settings,
        run_group=group,
    ).set_display_name("export-dataset")
    # The three arms of the comparison, same seeds: raw (no cleaning), clean (per-scene r*), global (one r).
    adapters = {}
    for arm, source, manifest_file in (
        ("raw", ingest_task.outputs["manifest"], "manifest.parquet"),
        ("clean", select_task.outputs["selection"], "cleaned_manifest.parquet"),
        ("global", select_task.outputs["selection"], "global/cleaned_manifest.parquet"),
    ):
        adapters[arm] = _on_gpu(
            finetune(
                manifest=source,
                base_model=base_task.outputs["base_model"],
                manifest_file=manifest_file,
                settings=settings,
                run_group=group,
            )
        ).set_display_name(f"finetune-{arm}")
    generate_task = _on_gpu(
        generate(
            manifest=ingest_task.outputs["manifest"],
            base_model=base_task.outputs["base_model"],
            raw_adapter=adapters["raw"].outputs["adapter"],
            clean_adapter=adapters["clean"].outputs["adapter"],
            global_adapter=adapters["global"].outputs["adapter"],
            settings=settings,
            run_group=group,
        )
    ).set_display_name("generate")
    evaluate_task = _on_gpu(
        evaluate(
            generations=generate_task.outputs["generations"],
            manifest=ingest_task.outputs["manifest"],
            scorer=scorer_task.outputs["scorer"],
            settings=settings,
            run_group=group,
        )
    ).set_display_name("evaluate")
    promote(
        evaluation=evaluate_task.outputs["evaluation"],
        adapter=adapters["clean"].outputs["adapter"],
        candidate_arm="clean",
        settings=settings,
        run_group=group,
    ).set_display_name("promote")
    # The cleaning report: ratios and cuts per scene with thumbnails, EGL repairs, rejects, sample grids, metrics.
    report(
        manifest=ingest_task.outputs["manifest"],
        captions=caption_task.outputs["captions"],
        selection=select_task.outputs["selection"],
        generations=generate_task.outputs["generations"],
        evaluation=evaluate_task.outputs["evaluation"],
        settings=settings,
        run_group=group,
    ).set_display_name("report")
    # Downstream proof: a segmenter trained on real SynthRS masks vs. + synthetic images of each arm
    # (both mask protocols, same budget); after `evaluate` so the cheap metrics come first.
    _on_gpu(
        segment(
            dataset=synth_task.outputs["dataset"],
            base_model=base_task.outputs["base_model"],
            raw_adapter=adapters["raw"].outputs["adapter"],
            clean_adapter=adapters["clean"].outputs["adapter"],
            global_adapter=adapters["global"].outputs["adapter"],
            settings=settings,
            run_group=group,
        ).after(evaluate_task)
    ).set_display_name("segment")


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline's IR YAML to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dldc_pipeline, package_path=str(out))
    return out
