"""`dldc synth` as a Kubeflow component."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synth(
    dataset: dsl.Output[dsl.Dataset],
    n_images: int,
    size: int,
    noise_rate: float,
    seed: int,
    settings: list,
    profile: str,
):
    """Generate SynthRS into the `dataset` artifact (Karpathy layout)."""
    from dldc.run import run_stage

    run_stage(
        [
            "synth",
            "--out",
            dataset.path,
            "--n-images",
            str(n_images),
            "--size",
            str(size),
            "--noise-rate",
            str(noise_rate),
            "--seed",
            str(seed),
        ],
        settings,
        profile=profile,
    )
