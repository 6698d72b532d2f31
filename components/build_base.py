"""`dldc build-base` as a Kubeflow component: the demo's tiny Stable Diffusion (CPU)."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_base(
    scorer: dsl.Input[dsl.Model],
    base_model: dsl.Output[dsl.Model],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
):
    """Train the demo's tiny Stable Diffusion into `base_model`; `scorer` (in-domain) checks its scenes."""
    from dldc.run import run_stage

    metrics = run_stage(["build-base", "--out", base_model.path, "--check-scorer", scorer.path], settings,
                        metrics_from=base_model.path)
    for name, value in metrics.items():
        summary.log_metric(name, value)
