"""`dldc build-base` as a Kubeflow component: the demo's tiny Stable Diffusion (CPU)."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_base(
    scorer: dsl.Input[dsl.Model],
    base_model: dsl.Output[dsl.Model],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    run_group: str,
):
    """Train the demo's tiny Stable Diffusion into `base_model`; `scorer` (in-domain) checks its scenes."""
    import json
    import os

    from dldc.cli import run_cli

    run_cli(["build-base", "--out", base_model.path, "--check-scorer", scorer.path], settings, run_group)
    with open(os.path.join(base_model.path, "base.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    summary.log_metric("denoiser_final_loss", report["denoiser"]["final_loss"])
    if "scene_check" in report:
        summary.log_metric("scene_accuracy", report["scene_check"]["generated"]["accuracy"])
