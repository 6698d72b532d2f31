"""``dldc generate``: images for the test split's prompts, for the base model and each LoRA adapter.

Prompts and seeds
    The prompts are the captions of the ``cfg.split`` pairs of the manifest: for each image its
    first ``prompts_per_image`` captions in caption order (``null``: all of them, so a SynthRS
    test image with 5 captions gives 5 prompts), each rendered ``images_per_prompt`` times. Image
    ``j`` of a prompt uses the seed ``sha256("{seed}/{pair_id}/{j}") mod 2**31``: it depends only
    on the pair, never on the batch or the order, and every arm uses the same seeds, so arms
    differ only by their weights. The noise is drawn on the CPU, so the seeds mean the same on
    every device. The test images' captions are used as written: SynthRS's test split carries
    caption noise too, and it hits every arm alike.

Arms
    ``cfg.arms`` maps an arm name to an adapter folder from ``dldc finetune`` (``""``: the base
    alone). The base pipeline is loaded once; each adapter is loaded with diffusers'
    ``load_lora_weights`` and unloaded after its arm.

Resuming
    Images are written one by one, atomically. A re-run skips every image that exists and is an
    intact PNG (every chunk's CRC checked: a truncated or bit-flipped image is made again), unless
    the arm's settings changed (base, adapter bytes, steps, guidance, sampler, resolution,
    adapter scale, precision, seed: ``arms/<arm>.json``), in which case that arm's images are
    deleted and made again.

Output contract (``cfg.out`` = ``DIR``; read by ``dldc evaluate``, :mod:`dldc.evaluate.generations`)::

    DIR/
      images/<gen_id>.png      RGB PNG, height x width
      generations.parquet      one row per image, every arm (schema below)
      generate.json            config, counts per arm (generated / reused), seconds, images/s
      arms/<arm>.json          the settings each arm's images were made with

    ``DIR`` is locked while a run writes it (:func:`dldc.io.output_lock`).

    ``generations.parquet``
    ============== ======== ===========================================================
    column         type     meaning
    ============== ======== ===========================================================
    gen_id         string   ``<arm>_<pair_id with ':' -> '-'>_<j>``, unique within DIR
    image_id       string   the real test image whose caption is the prompt (manifest id)
    pair_id        string   the manifest pair the prompt is
    scene          string   the scene of that image
    prompt         string   the caption used as the prompt
    seed           int64    the generation seed (same for every arm)
    path           string   ``images/<gen_id>.png``, relative to DIR
    arm            string   ``base``, ``raw``, ``clean``, ... (keys of ``generate.arms``)
    model          string   the base model's hub id or folder
    adapter        string   the adapter folder (``""`` for the base arm)
    guidance_scale float64  classifier-free guidance scale
    steps          int64    denoising steps
    height, width  int64    pixels
    ============== ======== ===========================================================

Example::

    cfg = GenerateConfig(base="data/base/model", arms={"base": "", "raw": "data/finetune/raw"})
    result = generate_images(cfg)
    pd.read_parquet(result.table).groupby("arm").size()
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from dldc.config import GenerateConfig
from dldc.data.manifest import read_manifest
from dldc.device import DTYPES, resolve_device, resolve_precision, set_threads
from dldc.io import atomic_path, file_sha256, output_lock, png_intact, remove_stale_temps, write_json, write_parquet
from dldc.t2i.finetune import ADAPTER_FILE, base_digest
from dldc.t2i.models import resolve_base

GENERATIONS_FILE = "generations.parquet"
REPORT_FILE = "generate.json"
IMAGES_DIR = "images"
ARMS_DIR = "arms"

GENERATIONS_SCHEMA = pa.schema(
    [
        ("gen_id", pa.string()),
        ("image_id", pa.string()),
        ("pair_id", pa.string()),
        ("scene", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("path", pa.string()),
        ("arm", pa.string()),
        ("model", pa.string()),
        ("adapter", pa.string()),
        ("guidance_scale", pa.float64()),
        ("steps", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
    ]
)


@dataclass(frozen=True)
class GenerateResult:
    """Where ``generate_images`` wrote: the table, the report (as written) and the output folder."""

    table: Path
    report: dict[str, Any]
    out: Path


def prompt_seed(seed: int, pair_id: str, index: int) -> int:
    """Seed of image ``index`` of the prompt ``pair_id`` (independent of batches and arms).

    Example:
        >>> prompt_seed(0, "abc:0", 0) == prompt_seed(0, "abc:0", 0) != prompt_seed(0, "abc:1", 0)
        True
    """
    return int.from_bytes(hashlib.sha256(f"{seed}/{pair_id}/{index}".encode()).digest()[:8], "little") % (2**31)


def select_prompts(
    manifest: str | Path, split: str, prompts_per_image: int | None, images_per_prompt: int, seed: int
) -> pd.DataFrame:
    """The prompts of ``split``: ``image_id, pair_id, scene, prompt, seed, index`` (one row per image to make).

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: no pair in ``split``.
    """
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"manifest {manifest} not found; run `dldc ingest` (or set generate.manifest)")
    frame, _ = read_manifest(manifest)
    frame = frame[frame["split"] == split]
    if frame.empty:
        splits = sorted(read_manifest(manifest)[0]["split"].unique())
        raise ValueError(f"manifest {manifest} has no pairs in split {split!r} (it has {splits}); set generate.split")
    frame = frame.assign(_order=frame["pair_id"].map(_caption_order)).sort_values(["image_id", "_order", "pair_id"])
    if prompts_per_image is not None:
        frame = frame.groupby("image_id", sort=False).head(prompts_per_image)
    rows = [
        {
            "image_id": r.image_id,
            "pair_id": r.pair_id,
            "scene": r.scene,
            "prompt": r.caption,
            "seed": prompt_seed(seed, r.pair_id, j),
            "index": j,
        }
        for r in frame.itertuples(index=False)
        for j in range(images_per_prompt)
    ]
    return pd.DataFrame(rows)


def _caption_order(pair_id: str) -> int:
    tail = pair_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def gen_id_for(arm: str, pair_id: str, index: int) -> str:
    """``<arm>_<pair_id, unsafe characters as '-'>_<index>`` (a file name on every OS)."""
    return f"{arm}_{re.sub(r'[^A-Za-z0-9_.-]', '-', pair_id)}_{index}"


def arm_settings(cfg: GenerateConfig, arm: str, adapter: str, height: int, width: int, precision: str) -> dict:
    """Everything an arm's pixels depend on (compared on resume)."""
    return {
        "base": cfg.base,
        "base_digest": base_digest(cfg.base, cfg.revision),
        "adapter": adapter,
        "adapter_sha256": file_sha256(Path(adapter) / ADAPTER_FILE) if adapter else "",
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "scheduler": cfg.scheduler,
        "height": height,
        "width": width,
        "lora_scale": cfg.lora_scale if adapter else None,
        "precision": precision,
        "seed": cfg.seed,
    }


def generate_images(cfg: GenerateConfig, progress: bool = True) -> GenerateResult:
    """Generate every arm's images for the test prompts (see the module docstring).

    Raises:
        FileNotFoundError: the base, the manifest or an adapter is missing.
        ValueError: no prompts, or two prompts map to the same ``gen_id``.
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _generate_images(cfg, progress)


def _generate_images(cfg: GenerateConfig, progress: bool) -> GenerateResult:
    from dldc.t2i.models import load_pipeline

    for arm, adapter in cfg.arms.items():
        if adapter and not (Path(adapter) / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"arm {arm!r}: {Path(adapter) / ADAPTER_FILE} not found; run `dldc finetune` first")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    prompts = select_prompts(cfg.manifest, cfg.split, cfg.prompts_per_image, cfg.images_per_prompt, cfg.seed)
    out = Path(cfg.out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what killed runs left

    started = time.perf_counter()
    pipe = load_pipeline(cfg.base, dtype=DTYPES[precision], scheduler=cfg.scheduler, revision=cfg.revision).to(device)
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    height = width = cfg.resolution or native
    rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    generate_seconds = 0.0
    for arm, adapter in cfg.arms.items():
        table = prompts.assign(
            gen_id=[gen_id_for(arm, p, j) for p, j in zip(prompts["pair_id"], prompts["index"])],
        )
        if table["gen_id"].duplicated().any():
            raise ValueError(f"arm {arm!r}: two prompts map to the same gen_id; are pair_ids unique in the manifest?")
        table["path"] = [f"{IMAGES_DIR}/{gen_id}.png" for gen_id in table["gen_id"]]
        settings = arm_settings(cfg, arm, adapter, height, width, precision)
        _forget_stale_arm(out, arm, settings, table["path"].tolist())
        write_json(out / ARMS_DIR / f"{arm}.json", settings)  # before rendering: a killed run resumes
        todo = table[[not png_intact(out / path) for path in table["path"]]]
        counts[arm] = {"generated": len(todo), "reused": len(table) - len(todo)}
        if len(todo):
            mark = time.perf_counter()
            if adapter:
                pipe.load_lora_weights(adapter, weight_name=ADAPTER_FILE, adapter_name=arm)
                pipe.set_adapters([arm], adapter_weights=[cfg.lora_scale])
            _render(pipe, todo, out, cfg, height, width, f"generate {arm}", progress)
            if adapter:
                pipe.unload_lora_weights()
            generate_seconds += time.perf_counter() - mark
        rows += [
            {
                "gen_id": r.gen_id,
                "image_id": r.image_id,
                "pair_id": r.pair_id,
                "scene": r.scene,
                "prompt": r.prompt,
                "seed": int(r.seed),
                "path": r.path,
                "arm": arm,
                "model": resolve_base(cfg.base, cfg.revision)[0],  # a hub id, not a reference folder
                "adapter": adapter,
                "guidance_scale": float(cfg.guidance_scale),
                "steps": cfg.steps,
                "height": height,
                "width": width,
            }
            for r in table.itertuples(index=False)
        ]
    write_parquet(out / GENERATIONS_FILE, pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA))
    made = sum(c["generated"] for c in counts.values())
    report = {
        "config": cfg.model_dump(mode="json"),
        "prompts": int(prompts["pair_id"].nunique()),
        "images": len(rows),
        "arms": counts,
        "height": height,
        "width": width,
        "precision": precision,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
        "images_per_s": round(made / generate_seconds, 3) if made else None,
    }
    write_json(out / REPORT_FILE, report)
    return GenerateResult(out / GENERATIONS_FILE, report, out)


def _forget_stale_arm(out: Path, arm: str, settings: dict[str, Any], paths: list[str]) -> None:
    """Delete the arm's images (``paths``) when they were made with other settings, or unknown ones."""
    record = out / ARMS_DIR / f"{arm}.json"
    try:
        previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    except ValueError:
        previous = None
    if previous == settings:
        return
    for path in paths:
        (out / path).unlink(missing_ok=True)
    record.unlink(missing_ok=True)


@torch.no_grad()
def _render(
    pipe: Any, todo: pd.DataFrame, out: Path, cfg: GenerateConfig, height: int, width: int, desc: str, progress: bool
) -> None:
    bar = tqdm(total=len(todo), desc=desc, disable=not progress)
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo.iloc[start : start + cfg.batch_size]
        generators = [torch.Generator().manual_seed(int(seed)) for seed in batch["seed"]]
        images = pipe(
            batch["prompt"].tolist(),
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            height=height,
            width=width,
            generator=generators,
        ).images
        for image, path in zip(images, batch["path"]):
            with atomic_path(out / path) as tmp:
                image.save(tmp, format="PNG")
        bar.update(len(batch))
    bar.close()
