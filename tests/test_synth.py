"""SynthRS generator: determinism, layout on disk, masks, captions, noise and validation."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dldc.data.class_tables import load_class_table
from dldc.data.synthrs import (
    GENERIC_CAPTIONS,
    LAND_COVER,
    MIN_CAPTIONS_PER_SCENE,
    NOISE_KINDS,
    SCENES,
    SceneSample,
    clean_captions,
    render_scene,
    write_synthrs,
)
from dldc.data.synthrs import writer as synthrs_writer
from dldc.data.vocabulary import CELLS

# Words that only a caption of that scene would use (other_scene noise must carry them).
SCENE_WORDS = {
    "farmland": r"field|farm|crop|agricultur|parcel",
    "residential": r"house|residential|neighbourhood|suburb",
    "forest": r"forest|woodland|tree",
    "river": r"river",
    "lake": r"lake|pond",
    "beach": r"beach|sea|shore|sand|coast|waves",
    "airport": r"airport|airfield|runway",
    "parking": r"car|parking",
    "industrial": r"industrial|tank|factor|warehouse",
    "desert": r"desert|dune|sand",
}
# The land cover that makes each scene what it is.
DEFINING_COVER = {
    "farmland": {"crop"}, "residential": {"building", "road"}, "forest": {"tree"}, "river": {"water"},
    "lake": {"water"}, "beach": {"water", "sand"}, "airport": {"pavement"}, "parking": {"pavement", "vehicle"},
    "industrial": {"building", "pavement"}, "desert": {"sand"},
}
COVER_INDEX = {name: index for index, name, _ in LAND_COVER}
CELL_RE = re.compile(r"\b(" + "|".join(sorted(CELLS, key=len, reverse=True)) + r")\b")


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _karpathy(folder: Path) -> list[dict]:
    return json.loads((folder / "dataset_synthrs.json").read_text())["images"]


def _noise_labels(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "truth" / "noise_labels.jsonl").read_text().splitlines()]


def _scene_of(filename: str) -> str:
    return filename.rsplit("_", 1)[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """100 images of 32 px (10 per scene), default noise: shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synthrs") / "synthrs"
    summary = write_synthrs(out, n_images=100, size=32, seed=3, progress=False)
    return out, summary


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = write_synthrs(tmp_path / "a", n_images=20, size=32, seed=5, progress=False)
    second = write_synthrs(tmp_path / "b", n_images=20, size=32, seed=5, progress=False)
    hashes_a, hashes_b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert first == second
    assert len(hashes_a) == 2 * 20 + 10 + 5  # images, masks, class lists, 3 JSON + 2 truth files
    assert hashes_a == hashes_b


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    write_synthrs(tmp_path / "a", n_images=20, size=32, seed=1, progress=False)
    write_synthrs(tmp_path / "b", n_images=20, size=32, seed=2, progress=False)
    hashes_a, hashes_b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert hashes_a.keys() == hashes_b.keys()
    images = [name for name in hashes_a if name.startswith("images/")]
    assert all(hashes_a[name] != hashes_b[name] for name in images)
    assert hashes_a["dataset_synthrs.json"] != hashes_b["dataset_synthrs.json"]


def test_noise_rate_changes_captions_but_not_images(tmp_path: Path) -> None:
    write_synthrs(tmp_path / "clean", n_images=20, size=32, noise_rate=0.0, progress=False)
    write_synthrs(tmp_path / "noisy", n_images=20, size=32, noise_rate=0.6, progress=False)
    clean, noisy = _hashes(tmp_path / "clean"), _hashes(tmp_path / "noisy")
    for name in clean:
        if name.startswith(("images/", "masks/")):
            assert clean[name] == noisy[name]
    clean_truth = [row["clean"] for row in _noise_labels(tmp_path / "clean")]
    assert clean_truth == [row["clean"] for row in _noise_labels(tmp_path / "noisy")]
    assert any(row["noisy"] for row in _noise_labels(tmp_path / "noisy"))


def test_render_scene_is_deterministic_and_well_typed() -> None:
    for scene in SCENES:
        first = render_scene(scene, 48, np.random.default_rng([9, 1]))
        second = render_scene(scene, 48, np.random.default_rng([9, 1]))
        assert isinstance(first, SceneSample)
        assert first.image.shape == (48, 48, 3) and first.image.dtype == np.uint8
        assert first.mask.shape == (48, 48) and first.mask.dtype == np.uint8
        assert first.mask.max() < len(LAND_COVER)
        assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
        assert first.layout == second.layout and first.layout["scene"] == scene
        json.dumps(first.layout)  # JSON-serialisable
        assert first.image.std() > 5  # not a flat colour


# --- files on disk -----------------------------------------------------------------------------


def test_counts_per_scene_and_split(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    images = _karpathy(out)
    assert [image["imgid"] for image in images] == list(range(100))
    per_scene = Counter(_scene_of(image["filename"]) for image in images)
    assert per_scene == {scene: 10 for scene in SCENES} == summary["images_per_scene"]
    per_scene_split = Counter((_scene_of(image["filename"]), image["split"]) for image in images)
    for scene in SCENES:  # 10 images per scene, stratified 0.8 / 0.1 / 0.1
        assert [per_scene_split[scene, split] for split in ("train", "val", "test")] == [8, 1, 1]
        assert summary["images_per_scene_split"][scene] == {"train": 8, "val": 1, "test": 1}
    assert summary["images_per_split"] == {"train": 80, "val": 10, "test": 10}
    assert summary["n_images"] == 100 and summary["n_captions"] == 500
    assert summary["params"]["seed"] == 3 and summary["params"]["size"] == 32
    assert json.loads((out / "synthrs.json").read_text()) == summary


def test_round_robin_over_chosen_scenes(tmp_path: Path) -> None:
    summary = write_synthrs(tmp_path / "out", n_images=7, size=16, scenes=["lake", "desert"], progress=False)
    names = [image["filename"] for image in _karpathy(tmp_path / "out")]
    assert names == ["lake_0001.png", "desert_0001.png", "lake_0002.png", "desert_0002.png",
                     "lake_0003.png", "desert_0003.png", "lake_0004.png"]
    assert summary["images_per_scene"] == {"lake": 4, "desert": 3}
    assert sorted(p.name for p in (tmp_path / "out" / "txtclasses_synthrs").iterdir()) == ["desert.txt", "lake.txt"]


def test_karpathy_json_is_valid(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    data = json.loads((out / "dataset_synthrs.json").read_text())
    assert data["dataset"] == "synthrs"
    next_sentid = 0
    for image in data["images"]:
        assert re.fullmatch(r"[a-z]+_\d{4}\.png", image["filename"])
        assert image["split"] in ("train", "val", "test")
        assert (out / "images" / image["filename"]).is_file()
        assert len(image["sentences"]) == 5
        assert image["sentids"] == [sentence["sentid"] for sentence in image["sentences"]]
        for sentence in image["sentences"]:
            assert sentence["imgid"] == image["imgid"]
            assert sentence["sentid"] == next_sentid
            next_sentid += 1
            assert sentence["raw"] and sentence["raw"] == sentence["raw"].lower()
            assert sentence["tokens"] == re.findall(r"[a-z0-9]+", sentence["raw"])
            assert len(sentence["tokens"]) <= 30


def test_class_lists_and_palette(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    for scene in SCENES:
        listed = (out / "txtclasses_synthrs" / f"{scene}.txt").read_text().split()
        assert listed == [f"{scene}_{n:04d}.png" for n in range(1, 11)]
    palette = json.loads((out / "palette.json").read_text())
    assert [(entry["index"], entry["name"]) for entry in palette] == [(i, n) for i, n, _ in LAND_COVER]
    assert all(entry["color"] == "#{:02x}{:02x}{:02x}".format(*rgb) for entry, (_, _, rgb) in zip(palette, LAND_COVER))
    assert not list(out.parent.glob(".synthrs.tmp-*"))


def test_masks_are_palette_pngs_that_match_their_images(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    expected_palette = [channel for _, _, rgb in LAND_COVER for channel in rgb]
    for image in _karpathy(out):
        name = image["filename"]
        with Image.open(out / "images" / name) as picture:
            assert picture.mode == "RGB" and picture.size == (32, 32)
        with Image.open(out / "masks" / name) as mask_picture:
            assert mask_picture.mode == "P" and mask_picture.size == (32, 32)
            assert mask_picture.getpalette()[:len(expected_palette)] == expected_palette
            mask = np.asarray(mask_picture)
        assert mask.max() < len(LAND_COVER)
        present = {LAND_COVER[value][1] for value in np.unique(mask)}
        missing = DEFINING_COVER[_scene_of(name)] - present
        assert not missing, f"{name} lacks {missing}"


# --- ground truth layout matches the pixels ----------------------------------------------------


def _cells_touched(region: np.ndarray) -> set[str]:
    rows, columns = np.nonzero(region)
    size = region.shape[0]
    return {CELLS[min(2, r * 3 // size) * 3 + min(2, c * 3 // size)] for r, c in zip(rows, columns)}


def test_layout_facts_match_the_mask() -> None:
    water = COVER_INDEX["water"]
    for index in range(15):
        lake = render_scene("lake", 64, np.random.default_rng([1, index]))
        rows, columns = np.nonzero(lake.mask == water)
        centre_cell = CELLS[int(rows.mean() * 3 // 64) * 3 + int(columns.mean() * 3 // 64)]
        assert centre_cell == lake.layout["lake"]["cell"]

        river = render_scene("river", 64, np.random.default_rng([2, index]))
        border = np.zeros((64, 64), bool)
        border[[0, -1], :] = border[:, [0, -1]] = True
        border_cells = _cells_touched((river.mask == water) & border)
        assert {river.layout["river"]["from"], river.layout["river"]["to"]} <= border_cells

        beach = render_scene("beach", 64, np.random.default_rng([3, index]))
        rows, columns = np.nonzero(beach.mask == water)
        row, column = rows.mean() - 31.5, columns.mean() - 31.5  # where the sea lies from the centre
        leaning = {"left": -column, "right": column, "top": -row, "bottom": row}
        assert max(leaning, key=leaning.get) == beach.layout["sea_side"]

        industrial = render_scene("industrial", 64, np.random.default_rng([4, index]))
        assert industrial.layout["n_tanks"] >= 2 and industrial.layout["n_buildings"] >= 1

        parking = render_scene("parking", 64, np.random.default_rng([5, index]))
        assert parking.layout["n_cars"] > 0 and (parking.mask == COVER_INDEX["vehicle"]).any()


# --- captions -----------------------------------------------------------------------------------


def test_clean_captions_are_distinct_short_and_about_the_scene() -> None:
    for scene in SCENES:
        for index in range(12):
            sample = render_scene(scene, 32, np.random.default_rng([index]))
            captions = clean_captions(scene, sample.layout, 50, np.random.default_rng(index))
            assert len(captions) >= MIN_CAPTIONS_PER_SCENE
            assert len(set(captions)) == len(captions)
            assert len(clean_captions(scene, sample.layout, 5, np.random.default_rng(index))) == 5
            for caption in captions:
                assert caption == caption.lower().strip() and not caption.endswith(".")
                assert 3 <= len(caption.split()) <= 30
                assert re.search(SCENE_WORDS[scene], caption), (scene, caption)
            assert any(CELL_RE.search(caption) for caption in captions), f"{scene}: no positional caption"


def test_captions_state_the_layout() -> None:
    river = render_scene("river", 32, np.random.default_rng(0))
    captions = clean_captions("river", river.layout, 50, np.random.default_rng(0))
    route = f"from the {river.layout['river']['from']} to the {river.layout['river']['to']}"
    assert any(route in caption for caption in captions)
    lake = render_scene("lake", 32, np.random.default_rng(0))
    cell = lake.layout["lake"]["cell"]
    assert any(re.search(rf"(in|on|at) the {cell}\b", caption)
               for caption in clean_captions("lake", lake.layout, 50, np.random.default_rng(0)))


# --- caption noise -----------------------------------------------------------------------------


def test_noise_rate_zero_gives_no_noise(tmp_path: Path) -> None:
    summary = write_synthrs(tmp_path / "out", n_images=20, size=16, noise_rate=0.0, progress=False)
    labels = _noise_labels(tmp_path / "out")
    assert len(labels) == 100 and not any(row["noisy"] for row in labels)
    assert summary["n_noisy_captions"] == 0
    raws = {s["sentid"]: s["raw"] for image in _karpathy(tmp_path / "out") for s in image["sentences"]}
    assert all(raws[row["sentid"]] == row["clean"] for row in labels)


def test_noise_rate_is_roughly_honoured(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    labels = _noise_labels(out)
    share = sum(row["noisy"] for row in labels) / len(labels)
    assert len(labels) == 500 and 0.22 <= share <= 0.38
    assert summary["n_noisy_captions"] == sum(summary["noisy_captions_per_kind"].values())
    assert set(summary["noisy_captions_per_kind"]) == set(NOISE_KINDS)
    assert all(count > 0 for count in summary["noisy_captions_per_kind"].values())


def test_noise_rate_by_scene_overrides(tmp_path: Path) -> None:
    summary = write_synthrs(tmp_path / "out", n_images=20, size=16, noise_rate=0.0,
                            noise_rate_by_scene={"forest": 1.0, "lake": 0.0}, progress=False)
    for row in _noise_labels(tmp_path / "out"):
        assert row["noisy"] == (_scene_of(row["filename"]) == "forest")
    assert summary["noisy_captions_per_scene"]["forest"] == 10
    assert summary["params"]["noise_rate_by_scene"] == {"forest": 1.0, "lake": 0.0}


def test_noise_kinds_restrict_the_kinds_drawn(tmp_path: Path) -> None:
    summary = write_synthrs(tmp_path / "within", n_images=40, size=16, noise_rate=1.0,
                            noise_kinds=["generic", "wrong_layout"], progress=False)
    kinds = {row["kind"] for row in _noise_labels(tmp_path / "within")}
    assert kinds == {"generic", "wrong_layout"}
    assert summary["noisy_captions_per_kind"]["other_scene"] == 0
    assert summary["params"]["noise_kinds"] == ["generic", "wrong_layout"]
    # The default draws exactly as an explicit list of all four kinds.
    write_synthrs(tmp_path / "default", n_images=20, size=16, progress=False)
    write_synthrs(tmp_path / "all", n_images=20, size=16, noise_kinds=list(NOISE_KINDS), progress=False)
    assert _noise_labels(tmp_path / "default") == _noise_labels(tmp_path / "all")


def test_every_noise_kind_corrupts_its_caption(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_synthrs(out, n_images=40, size=16, noise_rate=1.0, progress=False)
    raws = {s["sentid"]: s["raw"] for image in _karpathy(out) for s in image["sentences"]}
    labels = _noise_labels(out)
    assert all(row["noisy"] and row["kind"] in NOISE_KINDS for row in labels)
    assert Counter(row["kind"] for row in labels).keys() == set(NOISE_KINDS)
    for row in labels:
        noisy, clean, scene = raws[row["sentid"]], row["clean"], _scene_of(row["filename"])
        assert noisy != clean
        if row["kind"] == "truncated":
            words = noisy.split()
            assert 1 <= len(words) <= 3 and clean.split()[:len(words)] == words
            assert len(noisy) < len(clean)
        elif row["kind"] == "generic":
            assert noisy in GENERIC_CAPTIONS
        elif row["kind"] == "other_scene":
            assert row["source_scene"] in SCENES and row["source_scene"] != scene
            assert re.search(SCENE_WORDS[row["source_scene"]], noisy), (row, noisy)
        else:  # wrong_layout: same scene, but its cells are not the true ones
            assert row["source_scene"] is None
            assert re.search(SCENE_WORDS[scene], noisy)
            moved = CELL_RE.findall(noisy)
            assert moved
            if CELL_RE.search(clean):
                assert not set(moved) & set(CELL_RE.findall(clean))


# --- the images carry the scene ------------------------------------------------------------------


def _image_features(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(float) / 255
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    gradient = np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean()
    saturation = pixels.max(-1) - pixels.min(-1)
    return np.array([*pixels.mean((0, 1)), *pixels.std((0, 1)), gradient, (blue > red + 0.05).mean(),
                     (saturation < 0.08).mean(), (green > red + 0.03).mean()])


def test_a_nearest_centroid_classifier_tells_scenes_apart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_synthrs(out, n_images=100, size=32, seed=11, split_ratios=(0.5, 0.5, 0.0), progress=False)
    images = _karpathy(out)
    features = np.array([_image_features(np.asarray(Image.open(out / "images" / i["filename"]))) for i in images])
    labels = np.array([_scene_of(i["filename"]) for i in images])
    train = np.array([i["split"] == "train" for i in images])
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9
    standard = (features - mean) / std
    centroids = np.array([standard[train & (labels == scene)].mean(0) for scene in SCENES])
    distances = ((standard[~train][:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (np.array(SCENES)[distances.argmin(1)] == labels[~train]).mean()
    assert accuracy >= 0.6, f"accuracy {accuracy:.2f} (chance 0.10)"


# --- writing and validation -----------------------------------------------------------------------


def test_rewrite_replaces_the_folder_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_synthrs(out, n_images=10, size=16, progress=False)
    (out / "stale.txt").write_text("old")
    write_synthrs(out, n_images=10, size=16, seed=1, progress=False)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_previous_output_and_no_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    write_synthrs(out, n_images=10, size=16, progress=False)
    before = _hashes(out)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synthrs_writer, "save_mask", broken)
    with pytest.raises(OSError, match="disk full"):
        write_synthrs(out, n_images=10, size=16, seed=1, progress=False)
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_folder_that_is_not_synthrs(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a SynthRS folder"):
        write_synthrs(tmp_path, n_images=10, size=16, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"scenes": ["farmland", "volcano"]}, r"unknown scene.*'volcano'.*valid scenes: farmland, residential"),
        ({"scenes": []}, r"at least one scene"),
        ({"scenes": ["lake", "lake"]}, r"lake more than once"),
        ({"n_images": 5}, r"n_images must be .* at least the number of scenes \(10\)"),
        ({"size": 8}, r"size must be .* at least 16"),
        ({"noise_rate": 1.5}, r"noise_rate must be a number in \[0, 1\]"),
        ({"noise_rate": -0.1}, r"noise_rate must be a number in \[0, 1\]"),
        ({"noise_rate_by_scene": {"forest": 2.0}}, r"noise_rate_by_scene\['forest'\] must be"),
        ({"noise_rate_by_scene": {"jungle": 0.5}}, r"unknown scene.*'jungle'"),
        ({"split_ratios": (0.8, 0.1, 0.2)}, r"split_ratios must sum to 1"),
        ({"split_ratios": (0.8, 0.2)}, r"three non-negative numbers"),
        ({"split_ratios": (1.2, -0.1, -0.1)}, r"three non-negative numbers"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"captions_per_image": 0}, r"captions_per_image must be a positive integer"),
        ({"noise_kinds": ["generic", "typo"]}, r"noise_kinds must list distinct kinds of other_scene"),
        ({"noise_kinds": []}, r"noise_kinds must list distinct kinds"),
        ({"noise_kinds": "generic"}, r"not the string 'generic'"),
    ],
)
def test_bad_arguments_raise_helpful_errors(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_synthrs(tmp_path / "out", **{"n_images": 20, "size": 16, "progress": False, **arguments})
    assert not (tmp_path / "out").exists()


def test_render_scene_and_captions_validate_their_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="valid scenes"):
        render_scene("volcano", 32, rng)
    with pytest.raises(ValueError, match="at least 16"):
        render_scene("lake", 15, rng)
    with pytest.raises(ValueError, match="valid scenes"):
        clean_captions("volcano", {}, 5, rng)


def test_land_cover_is_the_shipped_class_table() -> None:
    """The generator draws with the table EGL and segment read masks with: one source, no copy."""
    table = load_class_table("synthrs")
    assert tuple((c.value, c.name, c.color) for c in table.classes) == LAND_COVER
