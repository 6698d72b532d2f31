"""The dldc Kubeflow pipeline: synth → ingest (later stages attach here as they arrive).

Compile with `dldc pipeline compile --out dldc.pipeline.yaml`, or run locally with
`kfp.local` (see tests/test_pipeline.py).
"""

from pathlib import Path

from kfp import compiler, dsl

from components.ingest import ingest
from components.synth import synth


@dsl.pipeline(name="dldc", description="Dual Loop Data Cleaning for remote-sensing text-to-image data.")
def dldc_pipeline(n_images: int = 400, size: int = 64, noise_rate: float = 0.3, seed: int = 0, settings: list = []):  # noqa: B006 - KFP reads the default as the parameter's default value
    """SynthRS → ingest. `settings` are `key=value` overrides passed to every stage (`dldc -S`)."""
    # One MLflow parent run per pipeline run: the stages share the job id as their run group.
    group = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    synth_task = synth(
        n_images=n_images, size=size, noise_rate=noise_rate, seed=seed, settings=settings, run_group=group
    ).set_display_name("synth")
    ingest(
        dataset=synth_task.outputs["dataset"], dataset_format="karpathy", settings=settings, run_group=group
    ).set_display_name("ingest")


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline's IR YAML to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(dldc_pipeline, package_path=str(out))
    return out
