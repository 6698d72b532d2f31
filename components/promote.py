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
    base_model: dsl.Input[dsl.Model] = None,
):
    """Register `adapter` (the `candidate_arm` of `evaluation`) in MLflow and decide on the champion alias.

    `base_model` is the base the adapter applies to (build_base's folder, bundled into the registered
    model; or name_base's reference, registered as the hub id it names): the paths the adapter and the
    evaluation recorded belong to other pods.
    """
    from dldc.run import run_stage

    base = [f"promote.base={base_model.path}"] if base_model is not None else []
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
        [*settings, *base],
        profile=profile,
    )
