"""``dldc finetune``: LoRA fine-tuning of Stable Diffusion with diffusers + peft, in one readable loop.

:func:`finetune` reads top to bottom like diffusers' ``train_text_to_image_lora.py`` without the
framework: load the base (hub id or folder, :mod:`dldc.t2i.models`), freeze it, add LoRA to the
UNet's attention projections (and optionally the text encoder), encode every training image once
(:mod:`dldc.t2i.data`: no augmentation, captions name positions), then train:

* epsilon / v-prediction loss on SD's noise schedule, optional offset noise and Min-SNR-γ weights;
* AdamW on the LoRA weights only (fp32), linear warmup + cosine decay, gradient clipping;
* mixed precision on CUDA: frozen weights in bf16/fp16, autocast, a gradient scaler for fp16;
* gradient accumulation and optional gradient checkpointing;
* batches from the paired sampler (:func:`paired_indices`, ``finetune.sampler``): runs on nested
  cleanings of one manifest draw the same pair in a batch slot unless it was dropped, so the dual
  loop's trials and the compared arms differ by their data, not by a reshuffled batch order;
* every random number (batch order, noise, timesteps, LoRA dropout) is drawn from
  a generator seeded by ``(seed, step, micro-batch)``, so a run resumed from a checkpoint draws
  exactly what the uninterrupted run drew (:mod:`dldc.t2i.checkpoints`; tested bit-identical on CPU).

Adapter folder (``cfg.out``)::

    pytorch_lora_weights.safetensors   diffusers' LoRA format (``pipe.load_lora_weights(out)``),
                                       LoRA rank/alpha/targets in its metadata
    finetune.json                      config, base, manifest (+ sha256), data counts, loss curve,
                                       throughput, resume history, sha256 of the adapter and samples
                                       (written last: marks completion; a finished adapter is only
                                       reused when its bytes still match)
    samples.png                        one held-out prompt per scene: base (top) vs. adapter (bottom)
    checkpoints/step-NNNNNNNN/         resumable state (not part of the adapter; checksummed,
                                       :mod:`dldc.t2i.checkpoints`)

The folder is locked while a run writes it (:func:`dldc.io.output_lock`): a second run on the
same ``out`` is refused.

Example (a few steps on a dummy base and a tiny manifest)::

    cfg = FinetuneConfig(base="path/to/base", manifest="data/ingest/manifest.parquet", out="lora", steps=4)
    report = finetune(cfg)
    pipe = load_pipeline(cfg.base); pipe.load_lora_weights(cfg.out)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dldc.config import FinetuneConfig
from dldc.device import DTYPES, autocast, resolve_device, resolve_precision, set_threads
from dldc.io import (
    TEMP_PATTERNS,
    atomic_path,
    canonical_safetensors,
    file_sha256,
    output_lock,
    remove_stale_temps,
    write_errors,
    write_json,
)
from dldc.io import finished_report as io_finished_report
from dldc.schedule import lr_at
from dldc.t2i.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from dldc.t2i.data import encode_latents, load_pairs, tokenize
from dldc.t2i.models import resolve_base
from dldc.t2i.train_utils import min_snr_weights

log = logging.getLogger(__name__)

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
REPORT_FILE = "finetune.json"
SAMPLES_FILE = "samples.png"
CHECKPOINT_DIR = "checkpoints"
# Settings that do not change the trained numbers (a run may resume with other values).
_NOT_IN_FINGERPRINT = {
    "out",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "sample_steps",
    "sample_guidance",
    "device",
    "threads",
}


def step_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the random numbers of micro-batch ``micro`` of optimizer step ``step``."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def sample_indices(n: int, count: int, start: int, seed: int) -> torch.Tensor:
    """``count`` pair indices from position ``start`` of an endless sequence of seeded epoch permutations.

    Every pair is seen once per epoch; position ``p`` always maps to the same pair, whatever
    step the run (re)started at.
    """
    out: list[int] = []
    position = start
    while len(out) < count:
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(count - len(out), n - offset)
        out += order[offset : offset + take].tolist()
        position += take
    return torch.tensor(out, dtype=torch.long)


def pair_hashes(pair_ids: list[str]) -> np.ndarray:
    """A fixed 64-bit hash of each ``pair_id`` (``uint64``), the paired sampler's identity of a pair."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little") for p in pair_ids],
        dtype=np.uint64,
    )


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise (uint64 arithmetic wraps, as it should)."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def paired_indices(hashes: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """``count`` pair indices, slot ``j`` taking the pair whose hash mixed with ``(seed, j)`` is smallest.

    Each slot is a uniform draw over the pairs given (with replacement), and the draw is coupled
    across runs: for a subset of the pairs, a slot picks the same pair as for the full set unless
    that pair is missing from the subset (then another, still uniformly). Runs on nested cleanings
    of one manifest thus share most of their batches (common random numbers).

    Example:
        >>> hashes = pair_hashes([f"img{i}:0" for i in range(10)])
        >>> full = paired_indices(hashes, 4, seed=1)
        >>> kept = np.array([i for i in range(10) if i != int(full[0])])  # drop slot 0's pair
        >>> sub = kept[paired_indices(hashes[kept], 4, seed=1).numpy()]
        >>> bool(sub[0] != full[0]), [int(a) == int(b) for a, b in zip(sub[1:], full[1:]) if int(b) in kept]
        (True, [True, True, True])
    """
    slots = _mix64(_mix64(np.array([seed % 2**64], dtype=np.uint64)) + np.arange(count, dtype=np.uint64))
    keys = _mix64(hashes[None, :] ^ slots[:, None])
    return torch.from_numpy(keys.argmin(axis=1).astype(np.int64))


def batch_indices(
    sampler: str, hashes: np.ndarray, batch_size: int, step: int, micro: int, grad_accum: int, seed: int
) -> torch.Tensor:
    """The pair indices of micro-batch ``micro`` of step ``step`` under ``sampler`` (``paired`` or ``epoch``)."""
    if sampler == "paired":
        return paired_indices(hashes, batch_size, step_seed(seed, step, micro))
    return sample_indices(len(hashes), batch_size, (step * grad_accum + micro) * batch_size, seed)


def finished_report(out: Path, run_id: str, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """The report of a finished run in ``out`` with fingerprint ``run_id`` (and its samples, if wanted), else None.

    Finished means the adapter (and the samples) still match the sha256 the report recorded: a
    damaged adapter is trained again, never reused.
    """

    def recorded(report: dict[str, Any]) -> dict[str, Any]:
        files = {ADAPTER_FILE: report.get("adapter_sha256")}
        if cfg.sample_steps:
            files[SAMPLES_FILE] = (report.get("samples") or {}).get("sha256")
        return files

    return io_finished_report(out / REPORT_FILE, "fingerprint", run_id, recorded)


def fingerprint(cfg: FinetuneConfig, manifest_sha256: str, base_digest: str) -> str:
    """Digest of everything that changes the trained numbers: config, data and base weights."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    payload = json.dumps({"config": settings, "manifest": manifest_sha256, "base": base_digest}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def base_digest(base: str, revision: str | None) -> str:
    """Identity of the base weights: a content digest for a folder, ``id@revision`` for a hub id."""
    base, revision = resolve_base(base, revision)
    path = Path(base)
    if not path.is_dir():
        return f"{base}@{revision or 'main'}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".bin"}):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def add_lora(cfg: FinetuneConfig, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, Any]:
    """Add LoRA adapters (peft) to the UNet (and the text encoder when configured); returns their configs."""
    from peft import LoraConfig

    torch.manual_seed(cfg.seed)  # the LoRA A matrices' initialisation
    configs = {
        "unet": LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules),
        )
    }
    unet.add_adapter(configs["unet"])
    if cfg.text_encoder_lora:
        configs["text_encoder"] = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            init_lora_weights="gaussian",
            target_modules=list(cfg.text_target_modules),
        )
        text_encoder.add_adapter(configs["text_encoder"])
    return configs


def save_adapter(out: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module, configs: dict[str, Any]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` in diffusers' format, atomically.

    Same weights, same bytes: peft keeps ``target_modules`` as a set, whose order changes with each
    process's string hashing, and safetensors writes the metadata keys in a random order; both are
    written sorted.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    text_layers = None
    if "text_encoder" in configs:
        text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".adapter-") as tmp, write_errors(out / ADAPTER_FILE):
        StableDiffusionPipeline.save_lora_weights(
            tmp,
            unet_lora_layers={k: v.detach().float().cpu().contiguous() for k, v in unet_layers.items()},
            text_encoder_lora_layers=(
                {k: v.detach().float().cpu().contiguous() for k, v in text_layers.items()} if text_layers else None
            ),
            unet_lora_adapter_metadata=_sorted_sets(configs["unet"].to_dict()),
            text_encoder_lora_adapter_metadata=_sorted_sets(configs["text_encoder"].to_dict()) if text_layers else None,
            safe_serialization=True,
        )
        canonical_safetensors(Path(tmp) / ADAPTER_FILE)  # its metadata in a fixed order: same run, same bytes
        os.replace(Path(tmp) / ADAPTER_FILE, out / ADAPTER_FILE)
    return out / ADAPTER_FILE


def _sorted_sets(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every set as a sorted list (JSON of a set follows the process's hash seed)."""
    return {key: sorted(value) if isinstance(value, (set, frozenset)) else value for key, value in settings.items()}


def finetune(
    cfg: FinetuneConfig,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Fine-tune LoRA adapters on ``cfg.manifest``; resume from the newest matching checkpoint.

    An adapter already finished in ``cfg.out`` with the same fingerprint (settings, data, base) is
    kept and its report returned: re-running with the same inputs recomputes nothing.

    Args:
        cfg: the ``finetune`` configuration section.
        progress: show progress bars.
        on_log: called as ``on_log(step, {"loss": ..., "lr": ...})`` every ``cfg.log_every`` steps.
        stop_after: stop right after this optimizer step without writing the adapter, as if the
            process had been killed there (tests and demos of resuming).

    Returns:
        The report written to ``<out>/finetune.json`` (``{"stopped_at": step}`` when stopped early).

    Raises:
        FileNotFoundError: the base or the manifest is missing.
        ValueError: no training pairs, or a checkpoint that does not fit the model.
        dldc.t2i.checkpoints.UnsafeCheckpointError: a checkpoint holds pickled objects other than tensors.
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _finetune(cfg, progress, on_log, stop_after)


def _finetune(
    cfg: FinetuneConfig,
    progress: bool,
    on_log: Callable[[int, dict[str, float]], None] | None,
    stop_after: int | None,
) -> dict[str, Any]:
    from dldc.t2i.models import load_components

    started = time.perf_counter()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    weight_dtype = DTYPES[precision]
    out = Path(cfg.out)
    remove_stale_temps(out, (*TEMP_PATTERNS, ".adapter-*"), recursive=False)  # what killed runs left
    manifest_sha = file_sha256(cfg.manifest) if Path(cfg.manifest).is_file() else ""
    run_id = fingerprint(cfg, manifest_sha, base_digest(cfg.base, cfg.revision))
    finished = finished_report(out, run_id, cfg)
    if finished is not None:
        log.info("%s is already trained with these settings, data and base (%s); nothing to do", out, run_id)
        return finished

    # --- the base, frozen, with LoRA on top ---------------------------------------------------
    parts = load_components(cfg.base, dtype=weight_dtype, revision=cfg.revision)
    tokenizer, text_encoder, vae, unet, scheduler = (
        parts[k] for k in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
    )
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False).to(device)
    lora_configs = add_lora(cfg, unet, text_encoder)
    trained = {"unet": unet, **({"text_encoder": text_encoder} if cfg.text_encoder_lora else {})}
    for module in trained.values():
        for param in module.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # LoRA weights train in fp32 whatever the base dtype
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.text_encoder_lora:
            text_encoder.gradient_checkpointing_enable()
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]

    # --- data: every image encoded once, every caption tokenized once -------------------------
    pairs = load_pairs(cfg.manifest, list(cfg.splits), cfg.resolution, progress=progress, max_pairs=cfg.max_pairs)
    cached_latents = encode_latents(vae, pairs.pixels, device, progress=progress)
    tokens = tokenize(tokenizer, pairs.captions)
    pair_image = torch.from_numpy(pairs.pair_image)
    hashes = pair_hashes(pairs.pair_ids)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    prediction_type = scheduler.config.prediction_type

    # --- optimizer, scaler, and the checkpoint to resume from ---------------------------------
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    checkpoints = out / CHECKPOINT_DIR
    resume = latest_checkpoint(checkpoints, run_id)
    start_step, losses, resumed_from = 0, [], []
    if resume is not None:
        state = load_checkpoint(resume, trained, optimizer, scaler)
        start_step, losses = int(state["step"]), list(state["losses"])
        resumed_from = [*state.get("resumed_from", []), start_step]
        log.info("resuming %s from step %d", out, start_step)
    elif list_checkpoints(checkpoints):
        log.info("ignoring checkpoints in %s (other settings or data, or damaged)", checkpoints)
        shutil.rmtree(checkpoints)
    setup_seconds = time.perf_counter() - started

    # --- the loop ----------------------------------------------------------------------------
    unet.train()
    text_encoder.train(cfg.text_encoder_lora)
    amp = autocast(device, precision)  # precision is fp32 off CUDA (resolve_precision)
    n_timesteps = scheduler.config.num_train_timesteps
    loop_start = time.perf_counter()
    bar = tqdm(range(start_step, cfg.steps), desc="finetune", disable=not progress, initial=start_step, total=cfg.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            seed = step_seed(cfg.seed, step, micro)
            generator = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)  # LoRA dropout draws from the global generator
            index = batch_indices(cfg.sampler, hashes, cfg.batch_size, step, micro, cfg.grad_accum, cfg.seed)
            rows = pair_image[index]
            latents = cached_latents[rows]
            noise = torch.randn(latents.shape, generator=generator)
            if cfg.noise_offset:
                noise += cfg.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
            timesteps = torch.randint(n_timesteps, (len(index),), generator=generator)
            latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps).to(weight_dtype)
            target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
            with amp:
                hidden = text_encoder(tokens[index].to(device))[0]
                prediction = unet(noisy, timesteps, hidden).sample
            per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            loss = (per_sample * min_snr_weights(alphas_cumprod, timesteps, cfg.snr_gamma, prediction_type)).mean()
            loss = loss / cfg.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.item()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")

        done = step + 1
        if on_log and (done % cfg.log_every == 0 or done == cfg.steps):
            on_log(done, {"loss": float(np.mean(losses[-cfg.log_every :])), "lr": optimizer.param_groups[0]["lr"]})
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(
                checkpoints,
                done,
                trained,
                optimizer,
                scaler,
                {"fingerprint": run_id, "losses": losses, "resumed_from": resumed_from},
                keep=cfg.keep_checkpoints,
            )
        if stop_after is not None and done >= stop_after and done < cfg.steps:
            return {"stopped_at": done, "fingerprint": run_id}
    loop_seconds = time.perf_counter() - loop_start
    trained_steps = cfg.steps - start_step

    # --- the adapter, its samples and the report -----------------------------------------------
    unet.eval()
    text_encoder.eval()
    adapter = save_adapter(out, unet, text_encoder, lora_configs)
    del parts, unet, text_encoder, vae
    samples = write_samples(cfg, out / SAMPLES_FILE, device) if cfg.sample_steps else None
    images_per_step = cfg.batch_size * cfg.grad_accum
    # What the adapter applies to: the hub id and revision a reference folder names, not the folder.
    base, revision = resolve_base(cfg.base, cfg.revision)
    report = {
        "config": cfg.model_dump(mode="json"),
        "manifest": str(cfg.manifest),
        "manifest_sha256": manifest_sha,
        "base": base,
        "revision": revision,
        "base_digest": base_digest(cfg.base, cfg.revision),
        "fingerprint": run_id,
        "adapter": adapter.name,
        "adapter_sha256": file_sha256(adapter),
        "precision": precision,
        "device": str(device),
        "data": {"pairs": len(pairs), "images": len(pairs.pixels), "splits": list(cfg.splits)},
        "lora_parameters": sum(p.numel() for p in params),
        "steps": cfg.steps,
        "resumed_from": resumed_from,
        "final_loss": float(np.mean(losses[-cfg.log_every :])),
        "losses": _thin(losses),
        "throughput": {
            "images_per_s": round(trained_steps * images_per_step / loop_seconds, 3) if trained_steps else None,
            "steps_this_run": trained_steps,
            "loop_s": round(loop_seconds, 2),
            "setup_s": round(setup_seconds, 2),
        },
        "samples": samples,
    }
    write_json(out / REPORT_FILE, report)
    shutil.rmtree(checkpoints, ignore_errors=True)  # done: the adapter supersedes them
    return report


def write_samples(cfg: FinetuneConfig, path: Path, device: torch.device) -> dict[str, Any]:
    """One held-out prompt per scene, same seeds, without and with the new adapter, as a grid PNG."""
    from dldc.data.manifest import read_manifest
    from dldc.t2i.grid import image_grid
    from dldc.t2i.models import load_pipeline

    frame, _ = read_manifest(cfg.manifest)
    held_out = frame[frame["split"] == "test"]
    pool = held_out if not held_out.empty else frame
    prompts = pool.drop_duplicates("scene").sort_values("scene")
    texts = prompts["caption"].tolist()
    dtype = DTYPES[resolve_precision(cfg.precision, device)]
    pipe = load_pipeline(cfg.base, dtype=dtype, revision=cfg.revision).to(device)
    kwargs = {
        "num_inference_steps": cfg.sample_steps,
        "guidance_scale": cfg.sample_guidance,
        "height": cfg.resolution,
        "width": cfg.resolution,
    }

    def seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(texts))]

    before = pipe(texts, generator=seeds(), **kwargs).images
    pipe.load_lora_weights(str(path.parent), weight_name=ADAPTER_FILE)
    after = pipe(texts, generator=seeds(), **kwargs).images
    with atomic_path(path) as tmp:
        image_grid([before, after]).save(tmp, format="PNG")
    return {
        "file": path.name,
        "prompts": dict(zip(prompts["scene"], texts)),
        "rows": ["base", "adapter"],
        "sha256": file_sha256(path),
    }


def _thin(values: list[float], points: int = 200) -> list[float]:
    if len(values) <= points:
        return [round(v, 5) for v in values]
    stride = math.ceil(len(values) / points)
    return [round(float(np.mean(values[i : i + stride])), 5) for i in range(0, len(values), stride)]
