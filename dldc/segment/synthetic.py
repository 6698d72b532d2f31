"""Synthetic training images for the segmentation arms: layout prompts, rendering, masks.

Prompts (:func:`layout_prompts`)
    ``cfg.synthetic_per_arm`` real *training* patches are drawn with ``cfg.seed`` (all of them
    when ``null``); each patch's mask is described by mask2text
    (:func:`dldc.data.mask_text.describe_mask` / ``render_description``, variant
    ``cfg.prompt_variant``), and the description is the prompt. Prompt ``k`` uses the seed
    :func:`dldc.t2i.generate.prompt_seed` of ``cfg.seed`` and the patch's identity, so every arm
    renders the same prompts with the same seeds and arms differ only by their weights.
    Validation and test patches are never described: nothing of the test split leaks into
    training. A patch with no labelled pixel gets no prompt (recorded in ``rejects``).

Masks of the synthetic images (the two protocols; the images are the same for both)
    * ``layout-prompt``: the source patch's mask, the layout the prompt asked for;
    * ``pseudo-label``: the prediction of the segmenter trained on the real training split
      (pixels whose top-class probability is below ``cfg.pseudo_label_threshold`` are ignored).

Rendering and cache (``DIR = cfg.out/synthetic``)::

    DIR/prompts.parquet            synth_id, source, tile, top, left, scene, prompt, seed
    DIR/<arm>/images/<synth_id>.png   generated RGB image (generation resolution)
    DIR/<arm>/settings.json        what the arm's pixels depend on (base, adapter bytes, steps...)

    Images are written one by one, atomically; a re-run renders only missing images, and an arm
    whose settings changed is rendered again. For training, images are resized (bilinear) to the
    patch size, the size of their masks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from dldc.config import SegmentConfig
from dldc.data.mask_text import describe_mask, render_description
from dldc.io import atomic_path, file_sha256, write_json, write_parquet
from dldc.segment.datasets import LabelSpace, PatchSet

PROMPTS_FILE = "prompts.parquet"
SETTINGS_FILE = "settings.json"
PROMPTS_SCHEMA = pa.schema(
    [
        ("synth_id", pa.string()),
        ("source", pa.string()),
        ("tile", pa.string()),
        ("top", pa.int64()),
        ("left", pa.int64()),
        ("scene", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
    ]
)


def synthrs_scene(source: str) -> str:
    """SynthRS scene of an image path: ``images/farmland_0003.png`` → ``farmland``."""
    return Path(source).stem.rsplit("_", 1)[0]


def layout_prompts(
    train: PatchSet, space: LabelSpace, cfg: SegmentConfig, scene_of: Any = None
) -> tuple[pd.DataFrame, list[dict[str, str]], list[int]]:
    """Layout prompts written from real training masks (see the module docstring).

    Args:
        train: the real training patches.
        space: their label space (its class table writes the text).
        cfg: ``synthetic_per_arm``, ``prompt_variant`` and ``seed`` are used.
        scene_of: ``source path -> scene`` (``None``: every scene ``unknown``).

    Returns:
        ``(prompts (PROMPTS_SCHEMA columns), rejects, patch index of each prompt)``.
    """
    from dldc.t2i.generate import prompt_seed

    order = np.random.default_rng([cfg.seed, 7]).permutation(len(train))
    rows, rejects, picked = [], [], []
    for i in order:
        if cfg.synthetic_per_arm is not None and len(rows) >= cfg.synthetic_per_arm:
            break
        source, (top, left) = train.sources[i], train.origins[i]
        scene = scene_of(source) if scene_of else "unknown"
        try:
            facts = describe_mask(space.to_positions(train.labels[i]), space.table, scene=scene)
        except ValueError as err:
            rejects.append({"image": f"{source}@{top},{left}", "reason": "no_prompt", "detail": str(err)})
            continue
        identity = f"{source}@{top},{left}"
        rows.append(
            {
                "synth_id": f"{len(rows):05d}",
                "source": source,
                "tile": train.tiles[i],
                "top": int(top),
                "left": int(left),
                "scene": scene,
                "prompt": render_description(facts, cfg.prompt_variant),
                "seed": prompt_seed(cfg.seed, identity, 0),
            }
        )
        picked.append(int(i))
    return pd.DataFrame(rows, columns=PROMPTS_SCHEMA.names), rejects, picked


class Renderer(Protocol):
    """What makes the synthetic images: a text-to-image model with optional adapters."""

    def settings(self, adapter: str) -> dict[str, Any]:
        """Everything the pixels of an arm depend on (compared on resume)."""

    def render(self, prompts: Sequence[str], seeds: Sequence[int], adapter: str) -> list[Image.Image]:
        """One RGB image per prompt, from its seed."""


class DiffusersRenderer:
    """Stable Diffusion (a hub id or ``save_pretrained`` folder) + LoRA adapters, as ``dldc generate`` renders.

    The base is loaded once; each adapter is loaded with ``load_lora_weights`` and unloaded after use.
    """

    def __init__(self, cfg: SegmentConfig):
        from dldc.device import resolve_device, resolve_precision

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self._pipe: Any = None
        self._size: int | None = None

    def _pipeline(self) -> Any:
        if self._pipe is None:
            from dldc.device import DTYPES
            from dldc.t2i.models import load_pipeline

            cfg = self.cfg
            pipe = load_pipeline(cfg.base, dtype=DTYPES[self.precision], scheduler=cfg.scheduler, revision=cfg.revision)
            self._pipe = pipe.to(self.device)
            native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
            self._size = cfg.resolution or native
        return self._pipe

    def settings(self, adapter: str) -> dict[str, Any]:
        from dldc.t2i.finetune import ADAPTER_FILE, base_digest

        cfg = self.cfg
        if adapter and not (Path(adapter) / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"{Path(adapter) / ADAPTER_FILE} not found; run `dldc finetune` first")
        return {
            "base": cfg.base,
            "base_digest": base_digest(cfg.base, cfg.revision),
            "adapter": adapter,
            "adapter_sha256": file_sha256(Path(adapter) / ADAPTER_FILE) if adapter else "",
            "steps": cfg.gen_steps,
            "guidance_scale": cfg.guidance_scale,
            "scheduler": cfg.scheduler,
            "resolution": cfg.resolution,
            "lora_scale": cfg.lora_scale if adapter else None,
            "precision": self.precision,
        }

    def render(self, prompts: Sequence[str], seeds: Sequence[int], adapter: str) -> list[Image.Image]:
        import torch

        from dldc.t2i.finetune import ADAPTER_FILE

        pipe = self._pipeline()
        if adapter:
            pipe.load_lora_weights(adapter, weight_name=ADAPTER_FILE, adapter_name="segment")
            pipe.set_adapters(["segment"], adapter_weights=[self.cfg.lora_scale])
        try:
            with torch.no_grad():
                return pipe(
                    list(prompts),
                    num_inference_steps=self.cfg.gen_steps,
                    guidance_scale=self.cfg.guidance_scale,
                    height=self._size,
                    width=self._size,
                    generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
                ).images
        finally:
            if adapter:
                pipe.unload_lora_weights()


def synthesize_arm(
    out: str | Path,
    arm: str,
    adapter: str,
    prompts: pd.DataFrame,
    renderer: Renderer,
    patch_size: int,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, int]]:
    """Render (or reuse) an arm's images for ``prompts``; return them at ``patch_size`` and the counts.

    Returns:
        ``(images (N, patch, patch, 3) uint8 in prompt order, {"generated", "reused"})``.
    """
    folder = Path(out) / arm
    images_dir = folder / "images"
    prompt_digest = hashlib.sha256(
        json.dumps(prompts[["synth_id", "prompt", "seed"]].values.tolist()).encode()
    ).hexdigest()[:16]
    settings = {**renderer.settings(adapter), "prompts": prompt_digest}
    record = folder / SETTINGS_FILE
    previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    if previous != settings and images_dir.exists():
        shutil.rmtree(images_dir)  # made with other settings (or unknown ones): render again
    write_json(record, settings)
    paths = [images_dir / f"{synth_id}.png" for synth_id in prompts["synth_id"]]
    todo = [i for i, path in enumerate(paths) if not path.is_file()]
    bar = tqdm(total=len(todo), desc=f"synthesize {arm}", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rendered = renderer.render(
            prompts["prompt"].iloc[chunk].tolist(), prompts["seed"].iloc[chunk].tolist(), adapter
        )
        for i, image in zip(chunk, rendered):
            with atomic_path(paths[i]) as tmp:
                image.convert("RGB").save(tmp, format="PNG")
        bar.update(len(chunk))
    bar.close()
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (patch_size, patch_size):
                image = image.resize((patch_size, patch_size), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(image))
    stacked = np.stack(arrays) if arrays else np.zeros((0, patch_size, patch_size, 3), np.uint8)
    return stacked, {"generated": len(todo), "reused": len(paths) - len(todo)}


def write_prompts(out: str | Path, prompts: pd.DataFrame) -> Path:
    """Write ``prompts.parquet`` (PROMPTS_SCHEMA) into ``out``."""
    path = Path(out) / PROMPTS_FILE
    write_parquet(path, pa.Table.from_pandas(prompts, schema=PROMPTS_SCHEMA, preserve_index=False))
    return path
