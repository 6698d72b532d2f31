"""`dldc export-scorer` as a Kubeflow component (GPU node: fp16 exports are gated on the GPU provider)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def export_scorer(
    scorer: dsl.Input[dsl.Model],
    manifest: dsl.Input[dsl.Dataset],
    exported: dsl.Output[dsl.Model],
    precision: str,
    settings: list,
    profile: str,
):
    """Export the in-domain `scorer` to ONNX at `precision` behind the parity gate (calibrated on `manifest`).

    `precision` "none" skips the export: the task leaves `exported` empty and `score_part` uses the
    torch scorer (kept in the DAG so the pipeline needs no conditional artifact, which kfp.local lacks).
    """
    import os

    if precision == "none":
        os.makedirs(exported.path, exist_ok=True)
        return

    from dldc.run import run_stage

    run_stage(
        [
            "export-scorer",
            "--scorer",
            f"indomain:{scorer.path}",
            "--out",
            exported.path,
            "--precision",
            precision,
            "--calibration",
            os.path.join(manifest.path, "manifest.parquet"),
        ],
        settings,
        profile=profile,
    )
