"""Opening dataset images safely, converting them to RGB, and fingerprinting them for near-duplicates.

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
import itertools
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
        fingerprint: what near-duplicate detection compares (only when ``ok``).
    """

    ok: bool
    reason: str | None = None
    detail: str = ""
    sha256: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    fingerprint: Fingerprint | None = None


def resolve_inside(root: str | Path, relative: str, *, root_resolved: bool = False) -> Path:
    """Resolve ``relative`` under ``root``, refusing anything that escapes it.

    Absolute paths, ``..`` components and symlinks that point outside all count as escapes.
    ``root_resolved``: ``root`` is already ``Path.resolve()``'d (a loop over many files resolves
    it once; each resolution is a system call per path component).

    Raises:
        PathEscapeError: the resolved path is not inside ``root``.
    """
    root_resolved = Path(root) if root_resolved else Path(root).resolve()
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
        ValueError: the image exceeds ``max_pixels`` or Pillow's decompression-bomb guard.
        OSError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ValueError(f"{image.width}x{image.height} exceeds max_pixels={max_pixels}")
            image.load()
            return to_rgb(image).copy()
    except Image.DecompressionBombError as err:  # Pillow's own guard fires in Image.open
        raise ValueError(f"decompression-bomb guard: {err}") from None


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
                prints = fingerprint(rgb)
    except UnidentifiedImageError:
        return ImageCheck(False, NOT_AN_IMAGE, "not a recognised image format", digest)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own guard fires in Image.open for images over twice its limit.
        return ImageCheck(False, TOO_LARGE, f"decompression-bomb guard: {err}", digest)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow reports truncated and damaged streams as OSError (sometimes SyntaxError).
        return ImageCheck(False, CORRUPT_IMAGE, f"cannot decode: {err}", digest)
    return ImageCheck(True, None, "", digest, width, height, mode, prints)


def _scipy_dct_matrix(n: int) -> np.ndarray:
    """The unnormalised DCT-II as a matrix: ``y[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N)``.

    That is ``scipy.fftpack.dct``'s default, which ``imagehash.phash`` applies along each axis,
    so the bits below are imagehash's bits and its thresholds mean the same here.
    """
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT32 = _scipy_dct_matrix(32)
# DCT values are rounded to this many decimals before the median comparison. Coefficients that
# are mathematically equal (symmetric or flat images) otherwise differ by ~1e-10 of BLAS rounding,
# and which of them lands above the median would depend on the CPU.
_HASH_DECIMALS = 3


@dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate detection compares, computed once per decoded image.

    Attributes:
        phash: 64-bit perceptual hash (:func:`perceptual_hash`).
        texture: RMS grey-level variation of the 32×32 grey thumbnail, i.e. the square root of
            the DCT's energy outside DC per pixel. Below a few tenths of a grey level the
            hash bits carry no information about the image.
        colours: the 4×4 RGB thumbnail (48 bytes, Pillow's integer box filter): what two
            low-texture images are compared by instead of hash bits.
    """

    phash: int
    texture: float
    colours: bytes


def fingerprint(image: Image.Image) -> Fingerprint:
    """Perceptual hash, texture and coarse colour layout of an RGB image.

    Example:
        >>> from PIL import Image
        >>> flat = fingerprint(Image.new("RGB", (64, 64), (10, 90, 200)))
        >>> flat.texture, list(flat.colours[:3])
        (0.0, [10, 90, 200])
        >>> fingerprint(Image.linear_gradient("L").convert("RGB")).texture > 50
        True
    """
    grey = _grey_thumbnail(image)
    # Variance from integer sums: exact, so the low-texture decision cannot depend on the CPU.
    n, total, squares = grey.size, int(grey.sum()), int((grey * grey).sum())
    texture = float(np.sqrt((n * squares - total * total) / (n * n)))
    colours = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), dtype=np.uint8).tobytes()
    return Fingerprint(_phash_of_grey(grey), round(texture, 6), colours)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash, bit for bit ``int(str(imagehash.phash(image)), 16)``.

    The grey image is resized to 32×32 (Lanczos), transformed with a 2-D DCT, and each of the
    8×8 lowest frequencies is compared to their median. Robust to re-encoding, resizing and
    small edits. On images without texture every bit is decided by rounding; compare those by
    :class:`Fingerprint` ``colours`` instead (as :func:`near_duplicate_of` does).

    Example:
        >>> from PIL import Image
        >>> a = Image.effect_mandelbrot((256, 256), (-2.0, -1.5, 1.0, 1.5), 100).convert("RGB")
        >>> hamming(perceptual_hash(a), perceptual_hash(a.resize((64, 64))))
        0
        >>> hamming(perceptual_hash(a), perceptual_hash(a.rotate(90))) > 12
        True
    """
    return _phash_of_grey(_grey_thumbnail(image))


def _grey_thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.int64)


def _phash_of_grey(grey: np.ndarray) -> int:
    low = np.round((_DCT32 @ grey.astype(np.float64) @ _DCT32.T)[:8, :8], _HASH_DECIMALS)
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


def colour_distance(a: bytes, b: bytes) -> int:
    """Largest per-cell, per-channel difference between two :attr:`Fingerprint.colours`."""
    return int(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).max())


@dataclass(frozen=True)
class NearDuplicate:
    """One image judged a near-duplicate of an earlier kept one.

    Attributes:
        kept: index of the kept image.
        distance: hash bits apart (textured images) or the colour distance (low-texture ones).
        by: ``"phash"`` or ``"colours"``: which comparison decided.
    """

    kept: int
    distance: int
    by: str

    def describe(self, kept_name: str) -> str:
        if self.by == "phash":
            return f"perceptual hash {self.distance} bits from {kept_name}"
        return f"low-texture image, colours within {self.distance} grey levels of {kept_name}"


def near_duplicate_of(
    prints: list[Fingerprint], max_distance: int, min_texture: float = 1.0, colour_tolerance: int = 2
) -> dict[int, NearDuplicate]:
    """Find near-duplicates among fingerprinted images.

    Items are taken in order; an item close to an earlier kept item is marked a duplicate of
    it. Textured images (``texture >= min_texture``) are compared by perceptual hash: within
    ``max_distance`` bits. Low-texture images (calm water, cloud, snow, bare desert) have hash
    bits decided by rounding, so they are compared only with each other, by their 4×4 colour
    layout: every cell and channel within ``colour_tolerance`` grey levels. Both searches use
    an index, so the cost stays near-linear instead of comparing every pair.

    Args:
        prints: fingerprints, in priority order (earlier items are kept).
        max_distance: Hamming distance at or below which two textured images are near-duplicates;
            ``-1`` turns near-duplicate detection off.
        min_texture: RMS grey levels (of the 32×32 thumbnail) below which an image is low-texture.
        colour_tolerance: grey levels within which two low-texture images' colours count as the same.

    Returns:
        ``{index: NearDuplicate}`` for every item judged a near-duplicate.

    Example:
        >>> a = Fingerprint(0b1111, 40.0, bytes(48))
        >>> b = Fingerprint(0b1110, 40.0, bytes(48))
        >>> sea = Fingerprint(0, 0.2, bytes([20, 60, 160] * 16))
        >>> calm = Fingerprint(1 << 40, 0.3, bytes([21, 61, 159] * 16))
        >>> sand = Fingerprint(0, 0.2, bytes([230, 210, 150] * 16))
        >>> near_duplicate_of([a, b, sea, calm, sand], max_distance=1)
        {1: NearDuplicate(kept=0, distance=1, by='phash'), 3: NearDuplicate(kept=2, distance=1, by='colours')}
    """
    if max_distance < 0 or len(prints) < 2:
        return {}
    textured = [i for i, p in enumerate(prints) if p.texture >= min_texture]
    flat = [i for i, p in enumerate(prints) if p.texture < min_texture]
    found = {
        textured[i]: NearDuplicate(textured[kept], distance, "phash")
        for i, (kept, distance) in _hash_duplicates([prints[i].phash for i in textured], max_distance).items()
    }
    found.update(_colour_duplicates(prints, flat, colour_tolerance))
    return dict(sorted(found.items()))


def _hash_duplicates(hashes: list[int], max_distance: int) -> dict[int, tuple[int, int]]:
    # Candidates come from a multi-index over bands of the hash (pigeonhole: two hashes within d
    # bits agree within d // m bits on at least one of m disjoint bands). Bands of 16 bits keep
    # the buckets sparse, so the candidate pairs are a small share of all pairs; they are found
    # and measured with sorted arrays, in blocks, and only the close ones are walked in order.
    # The result is the same as comparing every item with every earlier kept one.
    if len(hashes) < 2:
        return {}
    values = np.array(hashes, dtype=np.uint64)
    n_bands, radius = _band_plan(max_distance)
    edges = [int(e) for e in np.linspace(0, 64, n_bands + 1)]
    close: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        keys = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        for flip in _flips(hi - lo, radius):
            query = keys ^ np.uint64(flip)
            left = np.searchsorted(ranked, query, "left")
            counts = np.searchsorted(ranked, query, "right") - left
            close += _close_pairs(values, order, left, counts, max_distance)
    duplicates: dict[int, tuple[int, int]] = {}
    if not close:
        return duplicates
    later, earlier, distance = (np.concatenate(parts) for parts in zip(*close))
    walk = np.lexsort((earlier, distance, later))  # by item, then the closest, then the earliest
    is_duplicate = np.zeros(len(hashes), dtype=bool)
    for item, other, bits in zip(later[walk].tolist(), earlier[walk].tolist(), distance[walk].tolist()):
        if item not in duplicates and not is_duplicate[other]:  # items in order: ``other``'s fate is known
            duplicates[item] = (other, bits)
            is_duplicate[item] = True
    return duplicates


def _close_pairs(
    values: np.ndarray, order: np.ndarray, left: np.ndarray, counts: np.ndarray, max_distance: int, block: int = 1 << 22
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(later, earlier, distance)`` of the candidate pairs within ``max_distance``, ``block`` pairs at a time."""
    found = []
    ends = np.cumsum(counts)
    start = 0
    while start < len(values):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + block, "right")))
        part = counts[start:stop]
        total = int(part.sum())
        if total:
            item = np.repeat(np.arange(start, stop), part)
            offset = np.arange(total) - np.repeat(np.cumsum(part) - part, part)
            other = order[np.repeat(left[start:stop], part) + offset]
            earlier = other < item
            item, other = item[earlier], other[earlier]
            distance = np.bitwise_count(values[item] ^ values[other])
            near = distance <= max_distance
            found.append((item[near], other[near], distance[near].astype(np.int64)))
        start = stop
    return found


def _band_plan(max_distance: int) -> tuple[int, int]:
    """``(bands, radius)`` of the hash index: exact-match bands up to 3 bits, else 4 bands of 16 bits
    probed within ``max_distance // 4`` bits (while that stays a few hundred probes a band)."""
    if max_distance >= 4 and max_distance // 4 <= 2:
        return 4, max_distance // 4
    return min(max_distance + 1, 64), 0


def _flips(width: int, radius: int) -> list[int]:
    """Every ``width``-bit mask with at most ``radius`` bits set (0 first)."""
    masks = [0]
    for bits in range(1, radius + 1):
        masks += [sum(1 << b for b in chosen) for chosen in itertools.combinations(range(width), bits)]
    return masks


def _colour_duplicates(prints: list[Fingerprint], indices: list[int], tolerance: int) -> dict[int, NearDuplicate]:
    # Index kept images by their mean colour on a grid of cells ``tolerance + 1`` wide: two
    # images within ``tolerance`` on every cell have means within ``tolerance`` too, so they sit
    # in the same or a neighbouring grid cell.
    width = tolerance + 1
    grid: dict[tuple[int, ...], list[int]] = {}
    duplicates: dict[int, NearDuplicate] = {}
    for index in indices:
        mean = np.frombuffer(prints[index].colours, np.uint8).reshape(-1, 3).mean(axis=0)
        cell = tuple(int(m // width) for m in mean)
        best: tuple[int, int] | None = None
        for offset in np.ndindex(3, 3, 3):
            for kept in grid.get(tuple(c + o - 1 for c, o in zip(cell, offset)), ()):
                distance = colour_distance(prints[index].colours, prints[kept].colours)
                if distance <= tolerance and (best is None or (distance, kept) < (best[1], best[0])):
                    best = (kept, distance)
        if best is not None:
            duplicates[index] = NearDuplicate(best[0], best[1], "colours")
        else:
            grid.setdefault(cell, []).append(index)
    return duplicates
