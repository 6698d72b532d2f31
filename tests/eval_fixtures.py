"""Fixtures for evaluation tests: a tiny SynthRS manifest, an in-domain scorer, generations folders.

``write_generations`` writes the file contract of ``dldc generate`` (``images/<gen_id>.png`` +
``generations.parquet``) without a diffusion model: each arm's "generated" image is the real test
image blended with noise, ``noise`` of it, so an arm with less noise is closer to the real set.

Import from a test with ``sys.path`` pointing at ``tests/`` (pytest runs with
``--import-mode=importlib``, which does not add it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dldc.config import IndomainConfig, IngestConfig
from dldc.data.images import load_rgb
from dldc.data.ingest import ingest
from dldc.data.manifest import dataset_root, read_manifest
from dldc.data.synthrs import write_synthrs
from dldc.iel.indomain import train_indomain

SCENES = ("beach", "farmland", "forest", "residential")


def make_manifest(base: Path, n_images: int = 40, size: int = 32) -> Path:
    """SynthRS with ``n_images`` images of ``size`` px over 4 scenes, half of them in the test split."""
    write_synthrs(
        base / "synthrs",
        n_images=n_images,
        size=size,
        seed=0,
        captions_per_image=2,
        scenes=SCENES,
        split_ratios=(0.5, 0.0, 0.5),
        progress=False,
    )
    result = ingest(IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest"), workers=1), progress=False)
    return result.manifest


def random_scores(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A ``scores.parquet`` table for ``frame`` (a manifest): one scorer ``indomain`` with uniform random cosines."""
    from dldc.iel.fuse import scene_percentile

    rng = np.random.default_rng(seed)
    scores = frame[["pair_id", "image_id", "scene", "split"]].copy()
    scores["indomain"] = rng.uniform(-0.2, 0.8, len(scores))
    scores["indomain_clipscore"] = 100 * scores["indomain"].clip(lower=0)
    scores["fused"] = scene_percentile(scores["indomain"], scores["scene"])
    scores["scene_percentile"] = scores["fused"]
    return scores


def train_tiny_scorer(manifest: Path, out: Path, folds: int = 2, epochs: int = 2) -> Path:
    """A tiny cross-fitted in-domain scorer (``indomain-test`` architecture, 32 px)."""
    cfg = IndomainConfig(
        manifest=str(manifest),
        out=str(out),
        architecture="indomain-test",
        folds=folds,
        epochs=epochs,
        batch_size=16,
        warmup_steps=1,
        device="cpu",
        # A feature extractor for FD here, not a noise judge: image folds keep the exact scorer the
        # evaluate/promote assertions were written against (text folds deal its 40 images into
        # other folds, 30 components, and its 2-epoch features change with them).
        fold_groups="image",
    )
    train_indomain(cfg, progress=False)
    return out


def write_generations(
    folder: Path,
    manifest: Path,
    arms: dict[str, float],
    seeds: tuple[int, ...] = (0,),
    size: int = 32,
    split: str = "test",
    captions_per_image: int = 1,
    adapters: dict[str, str] | None = None,
) -> Path:
    """Write a generations folder: per arm, per test prompt and seed, a noisy copy of the real image.

    Args:
        folder: output folder (``images/`` + ``generations.parquet``).
        manifest: the manifest the prompts come from.
        arms: ``{arm: noise}``; ``noise`` in [0, 1] is the weight of uniform noise in the blend.
        seeds: generation seeds (each seed draws other noise).
        size: side of the square output images.
        split: the split the prompts come from.
        captions_per_image: prompts per image (its first captions).
        adapters: ``{arm: adapter folder}`` for the ``adapter`` column.
    """
    frame, meta = read_manifest(manifest)
    root = dataset_root(manifest, meta)
    pairs = frame[frame["split"] == split].sort_values("pair_id").groupby("image_id").head(captions_per_image)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for arm, noise in arms.items():
        for seed in seeds:
            for pair in pairs.itertuples():
                real = np.asarray(load_rgb(root / pair.image).resize((size, size)), dtype=np.float64)
                rng = np.random.default_rng([seed, int(pair.image_id, 16) % 2**32, len(rows)])
                pixels = (1 - noise) * real + noise * rng.uniform(0, 255, real.shape)
                gen_id = f"{arm}-{pair.pair_id.replace(':', '_')}-s{seed}"
                Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)).save(folder / "images" / f"{gen_id}.png")
                rows.append(
                    {
                        "gen_id": gen_id,
                        "image_id": pair.image_id,
                        "pair_id": pair.pair_id,
                        "scene": pair.scene,
                        "prompt": pair.caption,
                        "seed": seed,
                        "path": f"images/{gen_id}.png",
                        "arm": arm,
                        "model": "tiny-sd",
                        "adapter": (adapters or {}).get(arm, ""),
                        "guidance_scale": 7.5,
                        "steps": 4,
                        "height": size,
                        "width": size,
                    }
                )
    pd.DataFrame(rows).to_parquet(folder / "generations.parquet")
    return folder
