"""Reading what ``dldc generate`` wrote, and the real test images it is compared with.

A generations folder ``DIR`` holds ``images/<gen_id>.png`` and ``generations.parquet`` with one
row per generated image (:data:`GENERATION_COLUMNS`):

============== ===================================================================
column         meaning
============== ===================================================================
gen_id         unique id of the generated image within ``DIR``
image_id       the real test image whose caption is the prompt (a manifest id)
pair_id        the manifest pair the prompt came from
scene          scene class of that image
prompt         the text the image was generated from
seed           generation seed (arms share seeds: the pairing unit is (pair_id, seed))
path           image file, relative to ``DIR``
arm            which model made it: ``base``, ``raw``, ``clean``, ...
model          base model id or folder
adapter        LoRA adapter folder (empty for the base model)
guidance_scale classifier-free guidance scale
steps          denoising steps
height, width  pixels
============== ===================================================================

Several folders can be evaluated together (one per arm, or one holding all arms); an arm may
appear in only one of them. Every problem (missing folder, file or column, duplicate key,
mixed resolutions, an image id outside the manifest's test split, a scene that disagrees with
the manifest) stops the run with a message that says what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dldc.data.images import PathEscapeError, resolve_inside
from dldc.data.manifest import dataset_root, read_manifest

GENERATIONS_FILE = "generations.parquet"
GENERATION_COLUMNS = (
    "gen_id",
    "image_id",
    "pair_id",
    "scene",
    "prompt",
    "seed",
    "path",
    "arm",
    "model",
    "adapter",
    "guidance_scale",
    "steps",
    "height",
    "width",
)
REFERENCE_ARM = "real"  # reserved: the real images scored against the same prompts
_SHOW = 5


@dataclass(frozen=True)
class RealImages:
    """The real images the generations are compared with.

    Attributes:
        frame: one row per image: ``image_id``, ``scene``, ``split``, ``file`` (absolute path),
            sorted by ``image_id``.
        manifest: the manifest they come from.
        root: its dataset root.
    """

    frame: pd.DataFrame
    manifest: Path
    root: Path


def _sample(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOW else "")


def read_generations(folders: list[str | Path]) -> pd.DataFrame:
    """Read and check one or more generations folders.

    Args:
        folders: folders written by ``dldc generate``.

    Returns:
        All rows, with ``file`` (absolute image path) and ``folder`` added; ``seed``, ``steps``,
        ``height`` and ``width`` as ints.

    Raises:
        FileNotFoundError: a folder, its ``generations.parquet`` or an image file is missing.
        ValueError: missing columns, no rows, duplicate ids or keys, an arm in two folders, the
            reserved arm name ``real``, mixed resolutions, or a path outside its folder.
    """
    if not folders:
        raise ValueError("no generations folder given; pass --generations DIR (from `dldc generate`)")
    frames = []
    arm_folder: dict[str, Path] = {}
    for folder in map(Path, folders):
        table = folder / GENERATIONS_FILE
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found; run `dldc generate` to write {folder}")
        frame = pd.read_parquet(table)
        missing = [c for c in GENERATION_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{table} lacks columns {missing}; expected {list(GENERATION_COLUMNS)}")
        if frame.empty:
            raise ValueError(f"{table} has no rows; nothing to evaluate")
        duplicated = frame["gen_id"][frame["gen_id"].duplicated()].tolist()
        if duplicated:
            raise ValueError(f"{table}: duplicate gen_id {_sample(duplicated)}")
        for arm in frame["arm"].unique():
            if arm == REFERENCE_ARM:
                raise ValueError(f"{table}: arm name {REFERENCE_ARM!r} is reserved for the real images; rename the arm")
            if arm in arm_folder and arm_folder[arm] != folder:
                raise ValueError(f"arm {arm!r} appears in {arm_folder[arm]} and {folder}; evaluate each arm once")
            arm_folder[arm] = folder
        frame = frame.copy()
        frame["folder"] = str(folder)
        frame["file"] = [_inside(folder, relative) for relative in frame["path"]]
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    for column in ("seed", "steps", "height", "width"):
        rows[column] = rows[column].astype("int64")
    keys = rows.duplicated(["arm", "pair_id", "seed"], keep=False)
    if keys.any():
        bad = rows.loc[keys, ["arm", "pair_id", "seed"]].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        raise ValueError(f"(arm, pair_id, seed) must be unique; repeated: {_sample(bad)}")
    missing_files = [str(path) for path in rows["file"] if not Path(path).is_file()]
    if missing_files:
        raise FileNotFoundError(f"generated images are missing: {_sample(missing_files)}; re-run `dldc generate`")
    sizes = rows[["height", "width"]].drop_duplicates()
    if len(sizes) > 1:
        found = _sample([f"{h}x{w}" for h, w in sizes.itertuples(index=False)])
        raise ValueError(
            f"generations have several resolutions ({found}); FID-style numbers at different resolutions are "
            "not comparable: evaluate each resolution separately"
        )
    return rows


def _inside(folder: Path, relative: str) -> str:
    try:
        return str(resolve_inside(folder, str(relative)))
    except PathEscapeError as err:
        raise ValueError(
            f"{folder / GENERATIONS_FILE}: image path {relative!r} is not inside {folder}: {err}"
        ) from None


def real_images(manifest: str | Path, generations: pd.DataFrame, split: str = "test") -> RealImages:
    """The manifest's images that the generations' prompts come from.

    Args:
        manifest: the manifest the prompts were drawn from.
        generations: rows from :func:`read_generations`.
        split: the split every referenced image must be in (the evaluation compares with unseen
            real images; comparing with training images would flatter an overfit model).

    Returns:
        The referenced images, one row each.

    Raises:
        FileNotFoundError: the manifest or a real image file is missing.
        ValueError: an image id is not in the manifest, not in ``split``, or its scene differs
            from the generations' ``scene``.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found; run `dldc ingest` first")
    frame, meta = read_manifest(manifest)
    root = dataset_root(manifest, meta)
    images = frame.drop_duplicates("image_id").set_index("image_id")
    wanted = sorted(generations["image_id"].unique())
    unknown = [image_id for image_id in wanted if image_id not in images.index]
    if unknown:
        raise ValueError(f"image ids not in {manifest}: {_sample(unknown)}; generate from this manifest's prompts")
    chosen = images.loc[wanted]
    wrong_split = chosen.index[chosen["split"] != split].tolist()
    if wrong_split:
        raise ValueError(
            f"{len(wrong_split)} referenced image(s) are not in the {split!r} split of {manifest} "
            f"({_sample(wrong_split)}); evaluation compares with held-out images only: generate from {split} prompts"
        )
    scenes = generations.drop_duplicates(["image_id", "scene"]).set_index("image_id")["scene"]
    disagree = [i for i, scene in scenes.items() if images.at[i, "scene"] != scene]
    if disagree:
        raise ValueError(f"the scene of image(s) {_sample(disagree)} differs from the manifest's; regenerate")
    files = []
    for relative in chosen["image"]:
        try:
            path = resolve_inside(root, relative)
        except PathEscapeError as err:
            raise ValueError(f"{manifest}: {err}") from None
        if not path.is_file():
            raise FileNotFoundError(f"real image {path} is missing (dataset root {root}); restore the dataset")
        files.append(str(path))
    result = pd.DataFrame(
        {"image_id": wanted, "scene": chosen["scene"].tolist(), "split": chosen["split"].tolist(), "file": files}
    )
    return RealImages(result, manifest, root)
