"""``dldc build-base``: a tiny Stable Diffusion trained from scratch on SynthRS, the demo's "pretrained" model.

The demo cannot download Stable Diffusion, so it makes its own: the SD architecture
(``AutoencoderKL`` + ``UNet2DConditionModel`` + ``CLIPTextModel`` with the real CLIP tokenizer,
:mod:`dldc.t2i.models`) at toy size, trained on a *pretraining split* of SynthRS that is
generated apart from the data the fine-tunes use (another seed, by default no caption noise),
and saved with ``save_pretrained``. Every later stage loads it exactly like a hub id.

How it is trained (every choice made to fit minutes on two CPU cores; see
``benchmarks/t2i_cleaning.py`` for the measured time and the scene accuracy):

1. **Data.** ``write_synthrs`` + ``ingest`` into ``data`` (reused when its parameters match);
   the ``train`` split's pairs, images decoded once at ``resolution``. By default
   (``caption_style: scene``) the captions are scene-level alt texts ("a lake seen from above",
   :func:`scene_caption`): like a generic pretrained Stable Diffusion, the base knows the scenes
   but not the dataset's layout descriptions, which is what fine-tuning then teaches.
2. **VAE.** Trained briefly as an autoencoder (MSE + a small KL term, as SD's VAE without the
   perceptual and adversarial terms) on random ``vae_crop`` crops: the model is fully
   convolutional, so crops cost a quarter of full 64 px images and teach the same textures.
   SD's latent ``scaling_factor`` is then set to 1 / std of the training latents.
3. **UNet + text encoder, jointly from scratch.** Latents are encoded once (:mod:`dldc.t2i.data`);
   epsilon prediction with SD 1.5's noise schedule, Min-SNR-γ loss weighting (converges faster
   from scratch), AdamW with warmup + cosine decay, and ``caption_dropout`` of the captions
   replaced by ``""`` so that classifier-free guidance works.
4. **Save** a ``StableDiffusionPipeline`` (no safety checker) atomically, with ``base.json``.
5. **Scene check.** When an in-domain scorer is given, ``check_images_per_scene`` images per
   scene are generated from held-out prompts *through the saved folder* and classified by
   :mod:`dldc.t2i.scene_check`; the accuracy (and the classifier's accuracy on real images,
   its ceiling) goes into ``base.json``.

Output folder (``save_pretrained`` layout)::

    out/
      model_index.json, scheduler/, tokenizer/ (vocab.json, merges.txt, tokenizer.json),
      text_encoder/, unet/, vae/                   the pipeline (safetensors)
      base.json                                     config, data, losses, timings, scene check
      samples.png                                   one row per scene (when the check ran)
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dldc.config import BaseConfig, IngestConfig
from dldc.data.manifest import read_manifest, write_manifest
from dldc.device import resolve_device, set_threads
from dldc.io import atomic_dir, write_json
from dldc.schedule import lr_at
from dldc.t2i.data import PairData, encode_latents, load_pairs, to_model_range, tokenize
from dldc.t2i.models import TinySpec, assemble_pipeline, tiny_components
from dldc.t2i.train_utils import min_snr_weights

log = logging.getLogger(__name__)

REPORT_FILE = "base.json"
SAMPLES_FILE = "samples.png"


def spec_of(cfg: BaseConfig) -> TinySpec:
    """The model sizes in ``cfg``."""
    return TinySpec(
        resolution=cfg.resolution,
        vae_channels=tuple(cfg.vae_channels),
        latent_channels=cfg.latent_channels,
        unet_channels=tuple(cfg.unet_channels),
        unet_cross_attention=tuple(cfg.unet_cross_attention),
        unet_layers=cfg.unet_layers,
        text_time_embedding=cfg.unet_text_time_embedding,
        attention_head_dim=cfg.attention_head_dim,
        text_width=cfg.text_width,
        text_layers=cfg.text_layers,
        text_heads=cfg.text_heads,
        norm_groups=cfg.norm_groups,
    )


# Alt-text-like captions of the "generic" pretraining corpus (``caption_style: scene``).
SCENE_TEMPLATES: tuple[str, ...] = (
    "an aerial image of a {scene}",
    "a satellite image of a {scene}",
    "a {scene} seen from above",
    "a remote sensing image showing a {scene}",
    "a top down view of a {scene}",
)
_SCENE_WORDS = {"residential": "residential area", "industrial": "industrial area", "parking": "parking lot"}


def scene_caption(scene: str, index: int) -> str:
    """Caption ``index`` of an image in the scene-level style, e.g. ``"a lake seen from above"``."""
    return SCENE_TEMPLATES[index % len(SCENE_TEMPLATES)].format(scene=_SCENE_WORDS.get(scene, scene))


def prepare_pretraining_data(cfg: BaseConfig, progress: bool = False) -> Path:
    """Write the SynthRS pretraining split and its manifest into ``cfg.data`` (reused when unchanged).

    With ``caption_style: scene`` the manifest's captions are replaced by :func:`scene_caption`
    (``manifest-scene.parquet``): the demo's stand-in for a generic pretrained model, which knows
    what a lake or an airport looks like but not the dataset's layout descriptions.

    Returns:
        The manifest path to train on.
    """
    source = _synthrs_manifest(cfg, progress)
    if cfg.caption_style == "synthrs":
        return source
    frame, meta = read_manifest(source)
    frame["caption"] = [scene_caption(s, _caption_index(p)) for s, p in zip(frame["scene"], frame["pair_id"])]
    frame["caption_source"] = "template:scene"
    target = source.with_name("manifest-scene.parquet")  # same folder: the relative root still holds
    write_manifest(target, frame.to_dict("records"), meta)
    return target


def _caption_index(pair_id: str) -> int:
    tail = pair_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _synthrs_manifest(cfg: BaseConfig, progress: bool) -> Path:
    from dldc.data.ingest import ingest
    from dldc.data.synthrs import write_synthrs

    root = Path(cfg.data) / "synthrs"
    manifest = Path(cfg.data) / "ingest" / "manifest.parquet"
    wanted = {"n_images": cfg.n_images, "seed": cfg.data_seed, "noise_rate": cfg.noise_rate, "size": cfg.resolution}
    summary = root / "synthrs.json"
    if summary.is_file() and manifest.is_file():
        params = json.loads(summary.read_text(encoding="utf-8")).get("params", {})
        if all(params.get(key) == value for key, value in wanted.items()):
            return manifest
    write_synthrs(
        root,
        n_images=cfg.n_images,
        size=cfg.resolution,
        noise_rate=cfg.noise_rate,
        seed=cfg.data_seed,
        progress=progress,
    )
    ingest(IngestConfig(root=str(root), out=str(manifest.parent), workers=1), progress=progress)
    return manifest


def train_vae(
    vae: torch.nn.Module, pixels: torch.Tensor, cfg: BaseConfig, device: torch.device, progress: bool = False
) -> list[float]:
    """Train the autoencoder on random crops; returns the loss per step."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    crop = min(cfg.vae_crop, pixels.shape[-1])
    losses = []
    vae.train()
    for step in tqdm(range(cfg.vae_steps), desc="train VAE", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.vae_steps, cfg.vae_lr, warmup=min(50, cfg.vae_steps // 10))
        index = torch.randint(len(pixels), (cfg.vae_batch,), generator=generator)
        top, left = torch.randint(pixels.shape[-1] - crop + 1, (2,), generator=generator).tolist()
        batch = to_model_range(pixels[index, :, top : top + crop, left : left + crop]).to(device)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, batch) + cfg.vae_kl_weight * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def reconstruction_error(vae: torch.nn.Module, pixels: torch.Tensor, device: torch.device) -> float:
    """Mean squared error of ``decode(mean latent)`` in the [-1, 1] range (a quality readout)."""
    batch = to_model_range(pixels[:64]).to(device)
    return float(F.mse_loss(vae.decode(vae.encode(batch).latent_dist.mean).sample, batch))


class LatentImageTower(torch.nn.Module):
    """The image side of the text encoder's contrastive pretraining: a small CNN over VAE latents.

    Only there to give the text encoder a CLIP-style objective; it is discarded afterwards.
    """

    def __init__(self, latent_channels: int, width: int, embed_dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(latent_channels, width, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(width, embed_dim),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def pretrain_text_encoder(
    text_encoder: torch.nn.Module,
    latents: torch.Tensor,
    pairs: PairData,
    tokens: torch.Tensor,
    cfg: BaseConfig,
    device: torch.device,
    progress: bool = False,
) -> list[float]:
    """CLIP-style contrastive pretraining of the text encoder against the images' latents.

    Stable Diffusion conditions on a frozen, contrastively pretrained CLIP text encoder; this is
    the same recipe at toy scale: the text encoder's pooled output and a small CNN over each
    image's latent mean are pulled together (symmetric InfoNCE; repeated captions and repeated
    images in a batch count as positives, not negatives). Captions are padded to the batch's
    longest only (the text encoder is causal, so the states of real tokens do not depend on it).

    Returns:
        The loss per step.
    """
    from dldc.iel.indomain_train import contrastive_loss

    generator = torch.Generator().manual_seed(cfg.seed + 2)
    embed = cfg.text_width
    tower = LatentImageTower(latents.shape[1], 2 * embed, embed).to(device)
    projection = torch.nn.Linear(cfg.text_width, embed, bias=False).to(device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = [*text_encoder.parameters(), *tower.parameters(), *projection.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
    caption_ids = torch.from_numpy(np.unique(np.asarray(pairs.captions), return_inverse=True)[1].reshape(-1))
    pair_image = torch.from_numpy(pairs.pair_image)
    lengths = (tokens != tokens[:, -1:]).sum(1) + 1  # up to and including the first end-of-text
    text_encoder.train()
    losses = []
    for step in tqdm(range(cfg.text_steps), desc="pretrain text encoder", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.text_steps, cfg.text_lr, warmup=min(20, cfg.text_steps // 10))
        index = torch.randint(len(pairs), (cfg.text_batch,), generator=generator)
        rows, texts = pair_image[index], caption_ids[index]
        ids = tokens[index, : int(lengths[index].max())].to(device)
        image_features = F.normalize(tower(latents[rows].to(device)), dim=-1)
        text_features = F.normalize(projection(text_encoder(ids).pooler_output), dim=-1)
        positive = ((texts[:, None] == texts[None, :]) | (rows[:, None] == rows[None, :])).to(device)
        loss = contrastive_loss(image_features, text_features, logit_scale.clamp(max=math.log(100.0)), positive)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    text_encoder.eval()
    return losses


@torch.no_grad()
def encode_texts(text_encoder: torch.nn.Module, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The frozen text encoder's hidden states of every (77-token) caption, cached on the CPU."""
    return torch.cat(
        [text_encoder(tokens[i : i + 256].to(device))[0].float().cpu() for i in range(0, len(tokens), 256)]
    )


def train_denoiser(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    states: torch.Tensor,
    unconditional: torch.Tensor,
    pair_image: np.ndarray,
    cfg: BaseConfig,
    device: torch.device,
    progress: bool = False,
) -> list[float]:
    """Train the UNet from scratch on cached latents and cached text states; ends with its EMA weights.

    Epsilon prediction on SD's noise schedule, Min-SNR-γ weights, ``caption_dropout`` of the
    captions swapped for the empty caption's states (classifier-free guidance), AdamW with warmup +
    cosine decay, and an exponential moving average of the weights (``ema_decay``) that the
    saved model uses: with a few hundred steps, the average samples much better than the last step.

    Returns:
        The loss per step.
    """
    pair_image_t = torch.from_numpy(pair_image)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    params = [p for p in unet.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    n_timesteps = scheduler.config.num_train_timesteps
    unet.train()
    losses = []
    for step in tqdm(range(cfg.steps), desc="train UNet", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, warmup=cfg.warmup_steps)
        index = torch.randint(len(pair_image_t), (cfg.batch_size,), generator=generator)
        rows = pair_image_t[index]
        hidden = states[index].clone()
        hidden[torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout] = unconditional
        clean = latents[rows]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(n_timesteps, (cfg.batch_size,), generator=generator)
        clean, noise, timesteps = clean.to(device), noise.to(device), timesteps.to(device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, hidden.to(device)).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, timesteps, cfg.snr_gamma, "epsilon")).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_decay else 0.0
        with torch.no_grad():
            for average, param in zip(ema, params):
                average.lerp_(param, 1.0 - decay)
        losses.append(loss.item())
    with torch.no_grad():
        for average, param in zip(ema, params):
            param.copy_(average)
    unet.eval()
    return losses


def build_base(cfg: BaseConfig, progress: bool = True) -> dict[str, Any]:
    """Train the tiny demo base model and save it as a pipeline folder (see the module docstring).

    Args:
        cfg: the ``base`` configuration section.
        progress: show progress bars.

    Returns:
        The report written to ``<out>/base.json``.

    Raises:
        ValueError: model sizes that cannot be built (:meth:`TinySpec.check`).
        FileNotFoundError: ``check_scorer`` is set but is not an in-domain scorer folder.
    """
    spec = spec_of(cfg)
    spec.check()
    if cfg.check_scorer and not (Path(cfg.check_scorer) / "indomain.json").is_file():
        raise FileNotFoundError(
            f"base.check_scorer {cfg.check_scorer} is not an in-domain scorer; train it with `dldc train-scorer` "
            "or set base.check_scorer: null to skip the scene check"
        )
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    manifest = prepare_pretraining_data(cfg, progress)
    pairs = load_pairs(manifest, ["train"], cfg.resolution, progress=progress)
    timings["data_s"] = time.perf_counter() - start

    out = Path(cfg.out)
    with atomic_dir(out) as staging:
        components = tiny_components(spec, staging / "tokenizer", seed=cfg.seed)
        vae = components["vae"].to(device)
        mark = time.perf_counter()
        vae_losses = train_vae(vae, pixels=pairs.pixels, cfg=cfg, device=device, progress=progress)
        vae.register_to_config(scaling_factor=1.0)
        scaling = 1.0 / float(encode_latents(vae, pairs.pixels, device).std())  # SD: unit-variance latents
        vae.register_to_config(scaling_factor=scaling)
        latents = encode_latents(vae, pairs.pixels, device)
        recon_mse = reconstruction_error(vae, pairs.pixels, device)
        timings["vae_s"] = time.perf_counter() - mark
        vae.requires_grad_(False)

        mark = time.perf_counter()
        text_encoder = components["text_encoder"].to(device)
        tokens = tokenize(components["tokenizer"], pairs.captions)
        text_losses = pretrain_text_encoder(text_encoder, latents, pairs, tokens, cfg, device, progress)
        text_encoder.requires_grad_(False)
        states = encode_texts(text_encoder, tokens, device)
        unconditional = encode_texts(text_encoder, tokenize(components["tokenizer"], [""]), device)[0]
        timings["text_encoder_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        unet = components["unet"].to(device)
        losses = train_denoiser(
            unet, components["scheduler"], latents, states, unconditional, pairs.pair_image, cfg, device, progress
        )
        timings["unet_s"] = time.perf_counter() - mark

        pipe = assemble_pipeline(
            {k: (v.to("cpu") if hasattr(v, "to") else v) for k, v in components.items()}, scheduler=cfg.sample_scheduler
        )
        pipe.save_pretrained(str(staging))
        report: dict[str, Any] = {
            "config": cfg.model_dump(mode="json"),
            "manifest": str(manifest),
            "data": {"pairs": len(pairs), "images": len(pairs.pixels), "scenes": pairs.scene_names},
            "parameters": {
                name: sum(p.numel() for p in components[name].parameters()) for name in ("vae", "unet", "text_encoder")
            },
            "latent": {"size": spec.latent_size, "channels": spec.latent_channels, "scaling_factor": scaling},
            "vae": {"final_loss": _tail_mean(vae_losses), "reconstruction_mse": recon_mse},
            "text_encoder": {"first_loss": _tail_mean(text_losses[:20]), "final_loss": _tail_mean(text_losses)},
            "denoiser": {"first_loss": _tail_mean(losses[:20]), "final_loss": _tail_mean(losses)},
            "losses": {"vae": _thin(vae_losses), "text_encoder": _thin(text_losses), "denoiser": _thin(losses)},
        }
        write_json(staging / REPORT_FILE, report)

    if cfg.check_scorer:
        from dldc.t2i.scene_check import check_base_scenes

        mark = time.perf_counter()
        report["scene_check"] = check_base_scenes(
            str(out),
            manifest,
            cfg.check_scorer,
            images_per_scene=cfg.check_images_per_scene,
            steps=cfg.check_steps,
            guidance_scale=cfg.check_guidance,
            seed=cfg.seed,
            device=device,
            samples_png=out / SAMPLES_FILE,
        )
        timings["scene_check_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start
    report["timings"] = {key: round(value, 2) for key, value in timings.items()}
    write_json(out / REPORT_FILE, report)
    return report


def _tail_mean(values: list[float], n: int = 20) -> float | None:
    tail = values[-n:]
    return float(np.mean(tail)) if tail else None


def _thin(values: list[float], points: int = 200) -> list[float]:
    """At most ``points`` evenly spaced values (a loss curve for the report)."""
    if len(values) <= points:
        return [round(v, 5) for v in values]
    stride = math.ceil(len(values) / points)
    return [round(float(np.mean(values[i : i + stride])), 5) for i in range(0, len(values), stride)]
