"""Opening dataset images safely, converting them to RGB, and perceptual hashing.

Every later stage reads images through :func:`load_rgb`, so the conversion rules live here:

* ``CMYK``, ``YCbCr``, ``L``, ``1``, palette (``P``) → plain ``convert("RGB")``;
* images with alpha (``RGBA``, ``LA``, ``P`` with transparency) are composited on black,
  the usual no-data colour of remote-sensing products;
* 16-bit and float images (``I;16``, ``I``, ``F``) are stretched linearly between their
  0.5th and 99.5th percentiles to 0–255, the common display stretch for RS imagery;
* multi-frame files (TIFF stacks) use their first frame.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Reason codes for rejected images (documented in the README's manifest section).
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT_IMAGE = "corrupt_image"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
PATH_ESCAPE = "path_escape"

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class PathEscapeError(ValueError):
    """A dataset path that resolves outside its dataset root."""


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of opening and decoding one image.

    Attributes:
        ok: the image decoded fully and passed the size guards.
        reason: a reason code when not ``ok``.
        detail: a human-readable explanation.
        sha256: hex digest of the file bytes (when the file could be read).
        width: width in pixels (0 when unknown).
        height: height in pixels (0 when unknown).
        mode: the file's PIL mode before conversion to RGB.
        phash: 64-bit perceptual hash of the RGB image (only when ``ok``).
    """

    ok: bool
    reason: str | None = None
    detail: str = ""
    sha256: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: int | None = None


def resolve_inside(root: str | Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``, refusing anything that escapes it.

    Absolute paths, ``..`` components and symlinks that point outside all count as escapes.

    Raises:
        PathEscapeError: the resolved path is not inside ``root``.
    """
    root_resolved = Path(root).resolve()
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise PathEscapeError(f"{relative!r} is not a relative path inside the dataset root")
    candidate = (root_resolved / relative).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise PathEscapeError(f"{relative!r} resolves to {candidate}, outside the dataset root {root_resolved}")
    return candidate


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB by the rules in the module docstring."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float32)
        low, high = np.percentile(values, [0.5, 99.5])
        scale = 255.0 / (high - low) if high > low else 0.0
        stretched = np.clip((values - low) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(stretched, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = 64_000_000) -> Image.Image:
    """Open, fully decode and convert an image to RGB.

    Raises:
        ValueError: the image exceeds ``max_pixels``.
        OSError: the file is missing, truncated or not an image.
    """
    with Image.open(path) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{image.width}x{image.height} exceeds max_pixels={max_pixels}")
        image.load()
        return to_rgb(image).copy()


def inspect_image(path: Path, max_pixels: int, min_side: int) -> ImageCheck:
    """Open and decode one image completely, returning what is known about it.

    Never raises for bad files: the problem comes back as a reason code.
    """
    if not path.is_file():
        return ImageCheck(False, MISSING_FILE, f"{path.name} does not exist")
    data = path.read_bytes()
    if not data:
        return ImageCheck(False, EMPTY_FILE, "zero-byte file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its own limit; make every bomb an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height, mode = image.width, image.height, image.mode
                if width * height > max_pixels:
                    detail = f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
                    return ImageCheck(False, TOO_LARGE, detail, digest, width, height, mode)
                if min(width, height) < min_side:
                    detail = f"{width}x{height} has a side shorter than min_side={min_side}"
                    return ImageCheck(False, TOO_SMALL, detail, digest, width, height, mode)
                image.load()
                rgb = to_rgb(image)
                rgb.load()
                phash = perceptual_hash(rgb)
    except UnidentifiedImageError:
        return ImageCheck(False, NOT_AN_IMAGE, "not a recognised image format", digest)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own guard fires in Image.open for images over twice its limit.
        return ImageCheck(False, TOO_LARGE, f"decompression-bomb guard: {err}", digest)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow reports truncated and damaged streams as OSError (sometimes SyntaxError).
        return ImageCheck(False, CORRUPT_IMAGE, f"cannot decode: {err}", digest)
    return ImageCheck(True, None, "", digest, width, height, mode, phash)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (pHash): robust to re-encoding, resizing and small edits.

    The grey image is resized to 32×32, transformed with a 2-D DCT; the 8×8 lowest
    frequencies (without the DC term's influence on the threshold) are compared to their
    median.

    Example:
        >>> from PIL import Image
        >>> a = Image.linear_gradient("L").convert("RGB")
        >>> perceptual_hash(a) == perceptual_hash(a.resize((64, 64)))
        True
    """
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


def near_duplicate_of(hashes: list[int], max_distance: int) -> dict[int, tuple[int, int]]:
    """Find near-duplicates among perceptual hashes.

    Items are taken in order; an item whose hash is within ``max_distance`` bits of an earlier
    kept item is marked a duplicate of it. Candidates come from a band index (pigeonhole: two
    hashes within ``d`` bits agree exactly on at least one of ``d + 1`` bands), so the cost
    stays near-linear instead of comparing every pair.

    Args:
        hashes: 64-bit hashes, in priority order (earlier items are kept).
        max_distance: Hamming distance at or below which two images are near-duplicates.

    Returns:
        ``{index: (kept_index, distance)}`` for every item judged a near-duplicate.

    Example:
        >>> near_duplicate_of([0b1111, 0b1110, 1 << 40], max_distance=1)
        {1: (0, 1)}
    """
    if max_distance < 0 or len(hashes) < 2:
        return {}
    n_bands = min(max_distance + 1, 64)
    edges = [int(e) for e in np.linspace(0, 64, n_bands + 1)]
    masks = [(((1 << (hi - lo)) - 1) << lo, lo) for lo, hi in zip(edges[:-1], edges[1:])]
    buckets: list[dict[int, list[int]]] = [{} for _ in masks]
    duplicates: dict[int, tuple[int, int]] = {}
    for index, value in enumerate(hashes):
        best: tuple[int, int] | None = None
        for (mask, shift), bucket in zip(masks, buckets):
            for kept in bucket.get((value & mask) >> shift, ()):
                distance = hamming(value, hashes[kept])
                if distance <= max_distance and (best is None or (distance, kept) < (best[1], best[0])):
                    best = (kept, distance)
        if best is not None:
            duplicates[index] = best
            continue
        for (mask, shift), bucket in zip(masks, buckets):
            bucket.setdefault((value & mask) >> shift, []).append(index)
    return duplicates
