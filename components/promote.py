"""`dldc promote` as a Kubeflow component: register the candidate adapter, move the champion alias if better."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(
    evaluation: dsl.Input[dsl.Dataset],
    adapter: dsl.Input[dsl.Model],
    decision: dsl.Output[dsl.Artifact],
    candidate_arm: str,
    settings: list,
    profile: str,
):
    """Register `adapter` (the `candidate_arm` of `evaluation`) in MLflow and decide on the champion alias."""
    from dldc.run import run_stage

    run_stage(
        [
            "promote",
            "--evaluation",
            evaluation.path,
            "--adapter",
            adapter.path,
            "--candidate-arm",
            candidate_arm,
            "--out",
            decision.path,
        ],
        settings,
        profile=profile,
    )
