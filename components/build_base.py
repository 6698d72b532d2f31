"""`dldc build-base` as Kubeflow components: the demo's tiny Stable Diffusion (CPU), or a named real base."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_base(
    scorer: dsl.Input[dsl.Model],
    base_model: dsl.Output[dsl.Model],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
):
    """Train the demo's tiny Stable Diffusion into `base_model`; `scorer` (in-domain) checks its scenes."""
    from dldc.run import run_stage

    metrics = run_stage(["build-base", "--out", base_model.path, "--check-scorer", scorer.path], settings,
                        metrics_from=base_model.path, profile=profile)  # fmt: skip
    for name, value in metrics.items():
        summary.log_metric(name, value)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def name_base(base_model: dsl.Output[dsl.Model], base: str, settings: list, profile: str):
    """Make `base_model` stand for `base` (org/name[@revision], an absolute folder, or models:/NAME@ALIAS)."""
    from dldc.run import run_stage

    run_stage(["build-base", "--from", base, "--out", base_model.path], settings, profile=profile)
