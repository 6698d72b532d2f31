"""`dldc train-scorer` as a Kubeflow component."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_scorer(manifest: dsl.Input[dsl.Dataset], scorer: dsl.Output[dsl.Model], settings: list, profile: str):
    """Train the cross-fitted in-domain scorer on `manifest` into the `scorer` artifact."""
    import os

    from dldc.run import run_stage

    run_stage(
        ["train-scorer", "--manifest", os.path.join(manifest.path, "manifest.parquet"), "--out", scorer.path],
        settings,
        profile=profile,
    )
