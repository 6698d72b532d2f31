"""Segmentation datasets: image/mask folders → labelled patches, split by tile.

Layouts (:data:`LAYOUTS`; ``folder`` takes its own glob and mask rule from the config)
    Each layout finds the images with a glob under the dataset root and derives each image's
    mask path with a regular expression on the image's relative path. Images whose mask is
    missing, or that fail to decode, are recorded as rejections (``rejects``), never dropped
    silently.

    ========= ============================================== =============================================== =========
    layout    images                                         mask of an image                                table
    ========= ============================================== =============================================== =========
    synthrs   ``images/<scene>_<NNNN>.png``                  ``masks/<same>.png`` (index, palette PNG)       synthrs
    dubai     ``tile_N/images/image_part_00K.jpg``           ``tile_N/masks/image_part_00K.png`` (RGB)       dubai-seg
    loveda    ``{Train,Val}/{Urban,Rural}/images_png/N.png`` ``.../masks_png/N.png`` (index, 0 = no-data)    loveda
    potsdam   ``2_Ortho_RGB/top_potsdam_X_Y_RGB.tif``        ``5_Labels_all/top_potsdam_X_Y_label.tif``      isprs
    vaihingen ``top/top_mosaic_09cm_areaN.tif``              ``gts_for_participants/<same>.tif`` (RGB)       isprs
    deepglobe ``<split>/N_sat.jpg``                          ``<split>/N_mask.png`` (RGB, binarised at 128)  deepglobe
    ========= ============================================== =============================================== =========

    The dubai-seg table uses the colours its masks really use (``../shared/data/README.md``),
    not those of the shipped ``classes.json``, which are wrong; its ``Unlabeled`` (#9B9B9B) and
    unannotated (#000000) pixels are ignored.

Class tables
    :func:`dldc.data.class_tables.load_class_table`: a table shipped in ``dldc/data/classes``
    (``synthrs``, ``dubai-seg``, ``loveda``, ``isprs``, ``deepglobe``) or a JSON path. Classes marked ``ignore``
    (and stray unknown colours, up to 0.5% of a mask) become :attr:`LabelSpace.ignore_index`;
    the other classes are numbered ``0..C-1`` in table order.

Patches
    An image (after an optional ``scale``) is cut into ``patch`` × ``patch`` windows whose
    top-left corners step by ``stride`` along each axis; when the last step would leave a
    strip uncovered, one more window is placed flush with the far border, so every pixel
    is covered (windows overlap there). A side shorter than ``patch`` gets one window, padded
    with black pixels and ignored labels. ``stride == patch`` gives non-overlapping tiles.

Split (:func:`split_tiles`)
    By tile, never by patch: every patch of an image (``split_by="image"``) or of a top
    folder (``split_by="folder"``, e.g. Dubai's ``tile_N``) lands in the same split, so no
    test pixel is ever seen in training. The tiles are sorted, shuffled with ``seed`` and cut
    by ``ratios``; each split gets at least one tile when there are three or more.

Example:
    >>> import numpy as np
    >>> patch_origins(100, 40, 40)
    [0, 40, 60]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dldc.data.class_tables import ClassTable
from dldc.data.images import PathEscapeError, load_rgb, resolve_inside

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's images and masks are.

    Attributes:
        image_glob: glob of the images, relative to the dataset root.
        mask_pattern: regular expression matched against an image's relative path.
        mask_replace: the mask's relative path (``re`` replacement: ``\\1`` etc.).
        table: class table name or path.
        binarize: threshold RGB mask channels at 128 first (masks with off-colour pixels).
    """

    image_glob: str
    mask_pattern: str
    mask_replace: str
    table: str
    binarize: bool = False

    def mask_for(self, image: str) -> str | None:
        """The mask path of ``image`` (relative), or ``None`` when the pattern does not match."""
        match = re.fullmatch(self.mask_pattern, image)
        return match.expand(self.mask_replace) if match else None


LAYOUTS: dict[str, Layout] = {
    "synthrs": Layout("images/*.png", r"images/(.+)\.png", r"masks/\1.png", "synthrs"),
    "dubai": Layout("tile_*/images/*.jpg", r"(tile_[^/]+)/images/(.+)\.jpg", r"\1/masks/\2.png", "dubai-seg"),
    "loveda": Layout("*/*/images_png/*.png", r"(.+)/images_png/(.+)", r"\1/masks_png/\2", "loveda"),
    "potsdam": Layout(
        "2_Ortho_RGB/top_potsdam_*_RGB.tif",
        r"2_Ortho_RGB/top_potsdam_(.+)_RGB\.tif",
        r"5_Labels_all/top_potsdam_\1_label.tif",
        "isprs",
    ),
    "vaihingen": Layout("top/top_mosaic_09cm_area*.tif", r"top/(.+)\.tif", r"gts_for_participants/\1.tif", "isprs"),
    "deepglobe": Layout("*/*_sat.jpg", r"(.+)_sat\.jpg", r"\1_mask.png", "deepglobe", binarize=True),
}


@dataclass(frozen=True)
class LabelSpace:
    """The training classes of a class table: ignore classes removed, the rest numbered ``0..C-1``.

    Attributes:
        table: the class table masks are read with.
        names: class names, in training-index order.
        table_positions: the table position of each training class.
        ignore_index: the label of ignored pixels.
    """

    table: ClassTable
    names: tuple[str, ...]
    table_positions: tuple[int, ...]
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def from_table(cls, table: ClassTable, ignore_index: int = IGNORE_INDEX) -> LabelSpace:
        kept = [i for i, c in enumerate(table.classes) if not c.ignore]
        if not 0 < len(kept) <= ignore_index:
            raise ValueError(f"class table {table.name!r} must have 1..{ignore_index} classes that are not ignored")
        return cls(table, tuple(table.classes[i].name for i in kept), tuple(kept), ignore_index)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_labels(self, positions: np.ndarray) -> np.ndarray:
        """Table positions (``-1`` = ignored, what ``ClassTable.decode`` returns) → training labels (uint8)."""
        lookup = np.full(len(self.table.classes) + 1, self.ignore_index, np.uint8)  # last slot: -1
        lookup[list(self.table_positions)] = np.arange(self.num_classes)
        return lookup[np.where(positions < 0, len(self.table.classes), positions)]

    def to_positions(self, labels: np.ndarray) -> np.ndarray:
        """Training labels → table positions (``-1`` for ignored), what mask2text describes."""
        lookup = np.full(256, -1, np.int64)
        lookup[: self.num_classes] = self.table_positions
        return lookup[labels.astype(np.int64)]


def read_mask(path: str | Path, space: LabelSpace, binarize: bool = False, where: str = "mask") -> np.ndarray:
    """Read one mask file into training labels, shape ``(H, W)`` uint8.

    Raises:
        ValueError: more than 0.5% of the pixels have values or colours the table does not know.
    """
    with Image.open(path) as image:
        image.load()
        if binarize:
            rgb = (np.asarray(image.convert("RGB")) >= 128).astype(np.uint8) * 255
            image = Image.fromarray(rgb)
        positions = space.table.decode(image, max_side=1 << 30, where=where)
    return space.to_labels(positions)


@dataclass(frozen=True)
class Pair:
    """An image and its mask, relative to the dataset root; ``tile`` is the split unit."""

    image: str
    mask: str
    tile: str


@dataclass
class Listing:
    """What a layout found: usable pairs and rejected images (``{"image", "reason", "detail"}``)."""

    pairs: list[Pair] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)


def list_pairs(root: str | Path, layout: Layout, split_by: str = "image") -> Listing:
    """Find every image of ``layout`` under ``root`` and its mask.

    Args:
        root: the dataset root; no path may resolve outside it.
        layout: one of :data:`LAYOUTS` or a custom :class:`Layout`.
        split_by: ``image`` (each image is a tile) or ``folder`` (its first path component is).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no image matching the layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found")
    if split_by not in ("image", "folder"):
        raise ValueError(f"split_by must be 'image' or 'folder', got {split_by!r}")
    images = sorted(p.relative_to(root).as_posix() for p in root.glob(layout.image_glob) if p.is_file())
    if not images:
        raise FileNotFoundError(f"no image matches {layout.image_glob!r} under {root}; wrong dataset layout?")
    listing = Listing()
    for image in images:
        mask = layout.mask_for(image)
        if mask is None:
            listing.rejects.append({"image": image, "reason": "no_mask_rule", "detail": layout.mask_pattern})
            continue
        try:
            resolve_inside(root, image)
            if not resolve_inside(root, mask).is_file():
                listing.rejects.append({"image": image, "reason": "missing_mask", "detail": mask})
                continue
        except PathEscapeError as err:
            listing.rejects.append({"image": image, "reason": "path_escape", "detail": str(err)})
            continue
        tile = image.rsplit(".", 1)[0] if split_by == "image" else image.split("/", 1)[0]
        listing.pairs.append(Pair(image, mask, tile))
    return listing


def patch_origins(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis (see the module docstring).

    Example:
        >>> patch_origins(64, 64, 64), patch_origins(50, 64, 32), patch_origins(130, 64, 32)
        ([0], [0], [0, 32, 64, 66])
    """
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be positive, got {patch}, {stride}")
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def cut_patches(
    image: np.ndarray,
    labels: np.ndarray,
    patch: int,
    stride: int,
    ignore_index: int = IGNORE_INDEX,
    exclusive: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Cut an ``(H, W, 3)`` image and its ``(H, W)`` labels into windows.

    With ``exclusive``, a pixel already in an earlier window is labelled ``ignore_index`` in the
    later ones, so metrics count every pixel once (evaluation patches).

    Returns:
        ``(images (N, patch, patch, 3) uint8, labels (N, patch, patch) uint8, [(top, left)] * N)``;
        windows over a side shorter than ``patch`` are padded (black, ``ignore_index``).
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {labels.shape} differ in size")
    height, width = labels.shape
    pad_h, pad_w = max(0, patch - height), max(0, patch - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
    rows, columns = patch_origins(height, patch, stride), patch_origins(width, patch, stride)
    origins = [(top, left) for top in rows for left in columns]
    images = np.stack([image[t : t + patch, lf : lf + patch] for t, lf in origins])
    masks = np.stack([labels[t : t + patch, lf : lf + patch] for t, lf in origins])
    if exclusive:
        covered = np.zeros(labels.shape, bool)
        for mask, (t, lf) in zip(masks, origins):
            window = covered[t : t + patch, lf : lf + patch]
            mask[window] = ignore_index
            window[:] = True
    return images, masks, origins


@dataclass
class PatchSet:
    """Patches in memory: ``images`` ``(N, P, P, 3)`` uint8, ``labels`` ``(N, P, P)`` uint8, and per patch
    its ``tiles`` (split unit), ``sources`` (image path) and ``origins`` (top, left)."""

    images: np.ndarray
    labels: np.ndarray
    tiles: list[str]
    sources: list[str]
    origins: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.tiles)

    @classmethod
    def empty(cls, patch: int) -> PatchSet:
        return cls(np.zeros((0, patch, patch, 3), np.uint8), np.zeros((0, patch, patch), np.uint8), [], [], [])

    @classmethod
    def concat(cls, parts: Sequence[PatchSet]) -> PatchSet:
        return cls(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            [t for p in parts for t in p.tiles],
            [s for p in parts for s in p.sources],
            [o for p in parts for o in p.origins],
        )


def load_patches(
    root: str | Path,
    pairs: Sequence[Pair],
    space: LabelSpace,
    patch: int,
    stride: int | None = None,
    scale: float = 1.0,
    binarize: bool = False,
    max_pixels: int = 64_000_000,
    rejects: list[dict[str, str]] | None = None,
    exclusive: bool = False,
) -> PatchSet:
    """Read ``pairs`` and cut them into patches (images bilinear, masks nearest when ``scale != 1``).

    A pair that fails to decode, or whose image and mask sizes differ, is appended to
    ``rejects`` when given (else the error is raised). ``exclusive``: see :func:`cut_patches`.
    """
    stride = stride or patch
    parts: list[PatchSet] = []
    for pair in pairs:
        try:
            image = load_rgb(resolve_inside(root, pair.image), max_pixels=max_pixels)
            labels = read_mask(resolve_inside(root, pair.mask), space, binarize, where=pair.mask)
            if image.size != (labels.shape[1], labels.shape[0]):
                raise ValueError(f"image is {image.size[0]}x{image.size[1]}, mask {labels.shape[1]}x{labels.shape[0]}")
            if scale != 1.0:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BILINEAR)
                labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
            images, masks, origins = cut_patches(
                np.asarray(image), labels, patch, stride, space.ignore_index, exclusive
            )
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # the mask may be the bomb
            if rejects is None:
                raise ValueError(f"{pair.image}: {err}") from None
            rejects.append({"image": pair.image, "reason": "unreadable", "detail": str(err)})
            continue
        parts.append(PatchSet(images, masks, [pair.tile] * len(origins), [pair.image] * len(origins), origins))
    return PatchSet.concat(parts) if parts else PatchSet.empty(patch)


def split_tiles(tiles: Sequence[str], ratios: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> dict[str, str]:
    """A fixed, seeded train/val/test assignment of tiles (see the module docstring).

    Example:
        >>> split = split_tiles([f"t{i}" for i in range(10)], (0.6, 0.2, 0.2), seed=0)
        >>> sorted(list(split.values()).count(s) for s in ("train", "val", "test"))
        [2, 2, 6]
    """
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train, val, test), got {list(ratios)}")
    unique = sorted(set(tiles))
    n = len(unique)
    order = [unique[i] for i in np.random.default_rng(seed).permutation(n)]
    shares = np.asarray(ratios, np.float64) / sum(ratios)
    n_val, n_test = round(shares[1] * n), round(shares[2] * n)
    if n >= 3:
        n_val, n_test = max(n_val, 1 if shares[1] > 0 else 0), max(n_test, 1 if shares[2] > 0 else 0)
    n_train = max(n - n_val - n_test, 1 if n else 0)
    n_val = min(n_val, n - n_train)
    assignment = {}
    for i, tile in enumerate(order):
        assignment[tile] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return assignment


def subset(patches: PatchSet, keep: Sequence[bool] | np.ndarray) -> PatchSet:
    """The patches where ``keep`` is true."""
    index = np.flatnonzero(np.asarray(keep, bool))
    return PatchSet(
        patches.images[index],
        patches.labels[index],
        [patches.tiles[i] for i in index],
        [patches.sources[i] for i in index],
        [patches.origins[i] for i in index],
    )
