"""Ingest on the real RSICD subset, on a damaged copy of it, and on folder datasets."""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dldc.config import IngestConfig
from dldc.data.ingest import ingest
from dldc.data.manifest import MANIFEST_SCHEMA, REJECTS_SCHEMA, dataset_root, read_manifest
from dldc.data.readers import DatasetFormatError


@pytest.fixture(scope="module")
def rsicd_result(rsicd_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rsicd") / "ingest"
    return ingest(IngestConfig(root=str(rsicd_root), out=str(out)), progress=False)


def test_rsicd_reads_every_pair_scene_and_split(rsicd_result, rsicd_root):
    frame, meta = read_manifest(rsicd_result.manifest)
    assert len(frame) == 9300 and frame["image_id"].nunique() == 1860
    assert frame["scene"].nunique() == 31 and "unknown" not in set(frame["scene"])
    assert pq.read_table(rsicd_result.rejects).num_rows == 0
    source = json.loads((rsicd_root / "dataset_rsicd.json").read_text())
    expected_split = {f"images/{i['filename']}": i["split"] for i in source["images"]}
    assert dict(zip(frame["image"], frame["split"])) == expected_split
    first = source["images"][0]
    rows = frame[frame["image"] == f"images/{first['filename']}"]
    assert list(rows["caption"]) == [s["raw"].strip() for s in first["sentences"]]
    scene_list = (rsicd_root / "txtclasses_rsicd" / "Airport.txt").read_text().split()
    assert set(frame[frame["scene"] == "Airport"]["image"]) == {f"images/{n}" for n in scene_list}
    assert frame["pair_id"].is_unique and set(frame["caption_source"]) == {"original"}
    assert (frame["width"] == 224).all() and (frame["height"] == 224).all()
    assert pq.read_schema(rsicd_result.manifest).remove_metadata() == MANIFEST_SCHEMA
    assert meta.source_format == "karpathy" and meta.counts["kept_pairs"] == 9300
    assert dataset_root(rsicd_result.manifest, meta) == rsicd_root.resolve()
    assert rsicd_result.report["counts"]["images_with_one_repeated_caption"] > 0


def test_ids_are_stable_across_runs(rsicd_result, rsicd_root, tmp_path):
    again = ingest(IngestConfig(root=str(rsicd_root), out=str(tmp_path / "again")), progress=False)
    first, _ = read_manifest(rsicd_result.manifest)
    second, _ = read_manifest(again.manifest)
    pd.testing.assert_frame_equal(first, second)


@pytest.fixture
def damaged(rsicd_root, tmp_path):
    """A 12-image copy of RSICD with one defect of each kind."""
    source = json.loads((rsicd_root / "dataset_rsicd.json").read_text())
    entries = source["images"][:12]
    root = tmp_path / "rsicd-damaged"
    (root / "images").mkdir(parents=True)
    shutil.copytree(rsicd_root / "txtclasses_rsicd", root / "txtclasses_rsicd")
    for entry in entries:
        shutil.copy(rsicd_root / "images" / entry["filename"], root / "images" / entry["filename"])
    names = [e["filename"] for e in entries]
    data = (root / "images" / names[0]).read_bytes()
    (root / "images" / names[0]).write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "images" / names[1]).write_bytes(b"")  # zero-byte file
    (root / "images" / names[2]).unlink()  # missing file
    entries[3]["filename"] = "../../outside.jpg"  # escapes the root
    shutil.copy(rsicd_root / "images" / names[3], tmp_path / "outside.jpg")
    entries[4]["sentences"][2]["raw"] = "   "  # empty caption
    shutil.copy(root / "images" / names[5], root / "images" / "copy_of_5.jpg")  # exact duplicate
    entries.append({"filename": "copy_of_5.jpg", "split": "train", "sentences": [{"raw": "a copy"}] * 5})
    Image.open(root / "images" / names[6]).save(root / "images" / "resaved_6.png")  # near duplicate
    entries.append({"filename": "resaved_6.png", "split": "train", "sentences": [{"raw": "a re-encoded copy"}]})
    (root / "images" / "notes.jpg").write_text("not an image")
    entries.append({"filename": "notes.jpg", "split": "val", "sentences": [{"raw": "text file"}]})
    entries[7]["sentences"][0] = {"raw": None}  # not a string
    entries.append("not even an object")
    source["images"] = entries
    (root / "dataset_rsicd.json").write_text(json.dumps(source))
    return root, names


def test_damaged_copy_rejects_each_defect_and_keeps_every_valid_row(damaged, tmp_path):
    root, names = damaged
    result = ingest(IngestConfig(root=str(root), out=str(tmp_path / "out")), progress=False)
    frame, _ = read_manifest(result.manifest)
    rejects = pq.read_table(result.rejects).to_pandas()
    assert pq.read_schema(result.rejects).remove_metadata() == REJECTS_SCHEMA

    def reasons_for(name):
        return set(rejects[rejects["image"].str.endswith(name)]["reason"])

    assert reasons_for(names[0]) == {"corrupt_image"}
    assert reasons_for(names[1]) == {"empty_file"}
    assert reasons_for(names[2]) == {"missing_file"}
    assert reasons_for("outside.jpg") == {"path_escape"}
    assert reasons_for("copy_of_5.jpg") == {"duplicate_image"}
    assert reasons_for("resaved_6.png") == {"near_duplicate"}
    assert reasons_for("notes.jpg") == {"not_an_image"}
    assert set(rejects[rejects["image"].str.endswith(names[4])]["reason"]) == {"empty_caption"}
    assert set(rejects[rejects["image"].str.endswith(names[7])]["reason"]) == {"invalid_caption"}
    assert (rejects["reason"] == "bad_record").sum() == 1
    # Image-level defects reject every caption of the image (5 each, 1 for the small extras).
    counts = result.report["counts"]["rejected_pairs_by_reason"]
    assert counts == {
        "bad_record": 1,
        "corrupt_image": 5,
        "duplicate_image": 5,
        "empty_caption": 1,
        "empty_file": 5,
        "invalid_caption": 1,
        "missing_file": 5,
        "near_duplicate": 1,
        "not_an_image": 1,
        "path_escape": 5,
    }
    # Every valid row is kept: images 5..11 intact (minus the two bad captions), image 4 minus one.
    assert len(frame) == 7 * 5 + 4 - 1
    assert set(frame["image"]) == {f"images/{n}" for n in names[4:12]}
    # Nothing lost: every input caption is in exactly one of the two files.
    assert len(frame) + len(rejects) == 12 * 5 + 5 + 1 + 1 + 1


def test_duplicate_entries_and_image_dir_option(tmp_path):
    root = tmp_path / "ds"
    (root / "pics").mkdir(parents=True)
    _textured((10, 120, 30), seed=0).save(root / "pics" / "forest_1.png")
    entry = {"filename": "forest_1.png", "split": "test", "sentences": [{"raw": "green trees"}]}
    (root / "dataset_x.json").write_text(json.dumps({"images": [entry, entry]}))
    result = ingest(IngestConfig(root=str(root), out=str(tmp_path / "o"), image_dir="pics"), progress=False)
    frame, _ = read_manifest(result.manifest)
    assert list(frame["scene"]) == ["forest"] and list(frame["image"]) == ["pics/forest_1.png"]
    assert result.report["counts"]["rejected_pairs_by_reason"] == {"duplicate_entry": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"images": [', "invalid JSON at line 1"),
        ('{"pictures": []}', 'expected an object with an "images" list'),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_broken_dataset_json_gives_one_clear_error(tmp_path, content, message):
    root = tmp_path / "ds"
    root.mkdir()
    path = root / "dataset_broken.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DatasetFormatError) as err:
        ingest(IngestConfig(root=str(root), out=str(tmp_path / "o")), progress=False)
    assert message in str(err.value) and "dataset_broken.json" in str(err.value)


def _textured(colour, seed, size=32):
    """``colour`` with seeded texture (±30 levels in 4-pixel blocks): hashes see real structure, not rounding."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(-30, 31, (size // 4, size // 4, 1)), np.ones((4, 4, 1), dtype=np.int64))
    return Image.fromarray(np.clip(np.asarray(colour) + blocks, 0, 255).astype(np.uint8), "RGB")


def _folder_dataset(root):
    for seed, (scene, colour) in enumerate([("beach", (200, 180, 150)), ("lake", (20, 60, 160))]):
        (root / scene).mkdir(parents=True)
        for k in range(2):
            _textured(tuple(c + 40 * k for c in colour), seed=10 * seed + k).save(root / scene / f"{k}.png")
    _textured((1, 2, 3), seed=99).save(root / "lake" / "uncaptioned.png")


def test_folder_layout_with_jsonl(tmp_path):
    root = tmp_path / "folder"
    _folder_dataset(root)
    lines = [
        json.dumps({"image": "beach/0.png", "caption": "sand and sea", "split": "train"}),
        json.dumps({"image": "beach/0.png", "caption": "a sandy beach"}),
        json.dumps({"image": "beach/1.png", "caption": "waves on a beach", "split": "val"}),
        json.dumps({"image": "lake/0.png", "caption": "a blue lake", "split": "test"}),
        json.dumps({"image": "lake/1.png", "caption": ""}),
        "{not json",
    ]
    payload = "\n".join(lines).encode() + b'\n{"image": "lake/1.png", "caption": "bad \xff byte"}\n'
    (root / "captions.jsonl").write_bytes(payload)
    result = ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o")), progress=False)
    frame, meta = read_manifest(result.manifest)
    assert meta.created == "" and result.report["created"]  # the time is in the report, not in the manifest
    assert list(frame["caption"]) == ["sand and sea", "a sandy beach", "waves on a beach", "a blue lake"]
    assert list(frame["scene"]) == ["beach", "beach", "beach", "lake"]
    assert list(frame["pair_id"].str.split(":").str[1]) == ["0", "1", "0", "0"]
    counts = result.report["counts"]["rejected_pairs_by_reason"]
    assert counts == {"bad_record": 1, "empty_caption": 1, "undecodable_caption": 1}
    assert result.report["source"]["images_without_captions"] == 1
    first = (tmp_path / "o" / "manifest.parquet").read_bytes()
    ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o")), progress=False)
    assert (tmp_path / "o" / "manifest.parquet").read_bytes() == first  # same inputs, same bytes: DVC re-runs nothing


def test_folder_layout_with_csv_and_hash_splits(tmp_path):
    root = tmp_path / "folder"
    _folder_dataset(root)
    (root / "captions.csv").write_bytes(
        b'image,caption\nbeach/0.png,sand and sea\nlake/0.png,"a lake, calm"\nlake/1.png,caf\xe9\n'
    )
    result = ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o")), progress=False)
    frame, _ = read_manifest(result.manifest)
    assert list(frame["caption"]) == ["sand and sea", "a lake, calm"]
    assert set(frame["split"]) <= {"train", "val", "test"}
    assert result.report["counts"]["rejected_pairs_by_reason"] == {"undecodable_caption": 1}
    with pytest.raises(DatasetFormatError, match="'image' and 'caption' columns"):
        (root / "captions.csv").write_text("path,text\n")
        ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o2")), progress=False)


def test_same_manifest_under_any_blas_thread_count(tmp_path):
    """Textured, flat and near-uniform images: the verdicts must not depend on BLAS threads or the CPU."""
    import os
    import subprocess
    import sys

    root = tmp_path / "folder"
    _folder_dataset(root)
    rng = np.random.default_rng(7)
    (root / "sea").mkdir()
    for k, colour in enumerate([(20, 60, 160), (20, 60, 160), (25, 70, 150), (240, 240, 245), (241, 239, 245)]):
        noise = rng.integers(-1, 2, (48, 48, 3)) * (k % 2)
        pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "sea" / f"{k}.png")
    lines = [f"{p.relative_to(root).as_posix()},caption {i}" for i, p in enumerate(sorted(root.glob("*/*.png")))]
    (root / "captions.csv").write_text("image,caption\n" + "\n".join(lines) + "\n")
    outputs = []
    for threads in ("1", "2"):
        out = tmp_path / f"out-{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        command = [sys.executable, "-m", "dldc", "-S", "tracking.enabled=false", "--no-progress", "ingest"]
        command += ["--format", "folder", "--root", str(root), "--out", str(out)]
        subprocess.run(command, env=env, check=True, capture_output=True, cwd=tmp_path)
        outputs.append([(out / name).read_bytes() for name in ("manifest.parquet", "rejects.parquet")])
    assert outputs[0] == outputs[1]
    frame, _ = read_manifest(tmp_path / "out-1" / "manifest.parquet")
    rejects = pd.read_parquet(tmp_path / "out-1" / "rejects.parquet")
    # sea/1 is sea/0 plus ±1 of noise; sea/4 is sea/3's; sea/2 is 10 levels away and stays.
    expected = {"sea/1.png": "near_duplicate", "sea/4.png": "near_duplicate"}
    assert dict(zip(rejects["image"], rejects["reason"])) == expected
    assert "low-texture" in rejects.set_index("image").loc["sea/1.png", "detail"]
    assert len(frame) == len(lines) - 2


def test_lone_surrogate_captions_are_rejected_and_kept_visible(tmp_path):
    root = tmp_path / "folder"
    _folder_dataset(root)
    lines = [
        json.dumps({"image": "beach/0.png", "caption": "sand and sea"}),
        '{"image": "beach/1.png", "caption": "bad \\udcff byte"}',  # valid JSON, not encodable as UTF-8
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    result = ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o")), progress=False)
    rejects = pd.read_parquet(result.rejects)
    assert list(rejects["reason"]) == ["undecodable_caption"]
    assert list(rejects["caption"]) == ["bad \\udcff byte"]  # the escape as text, so the file can be written


def _small_folder_dataset(root):
    _folder_dataset(root)
    lines = [{"image": "beach/0.png", "caption": "sand and sea"}, {"image": "lake/0.png", "caption": "a blue lake"},
             {"image": "lake/1.png", "caption": "a deep lake"}]  # fmt: skip
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_copy_dataset_makes_the_output_carry_its_images(tmp_path):
    """What a Kubeflow pod needs: the manifest folder alone, moved elsewhere, still reaches every image."""
    root = tmp_path / "folder"
    _small_folder_dataset(root)
    (root / "escape.png").symlink_to(root / ".." / "outside.png")
    _textured((9, 9, 9), seed=5).save(tmp_path / "outside.png")
    with (root / "captions.jsonl").open("a") as handle:
        handle.write(json.dumps({"image": "escape.png", "caption": "not ours"}) + "\n")
    cfg = IngestConfig(format="folder", root=str(root), out=str(tmp_path / "o"), copy_dataset=True)
    result = ingest(cfg, progress=False)
    shutil.rmtree(root)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "o", moved)
    frame, meta = read_manifest(moved / "manifest.parquet")
    assert meta.root == "dataset" and meta.extra["source"] == str(root)
    images = dataset_root(moved / "manifest.parquet", meta)
    assert images == (moved / "dataset").resolve()
    assert [(images / image).is_file() for image in frame["image"]] == [True, True, True]
    # A link that leaves the dataset stays a link in the copy, and is still rejected as leaving it.
    assert result.report["counts"]["rejected_pairs_by_reason"] == {"path_escape": 1}


def test_a_url_root_is_fetched_with_fsspec(tmp_path):
    root = tmp_path / "bucket" / "rsicd"
    _small_folder_dataset(root)
    out = tmp_path / "o"
    result = ingest(IngestConfig(format="folder", root=root.as_uri(), out=str(out)), progress=False)
    frame, meta = read_manifest(result.manifest)
    assert len(frame) == 3 and meta.root == "dataset" and result.report["root"] == root.as_uri()
    assert (out / "dataset" / "beach" / "0.png").read_bytes() == (root / "beach" / "0.png").read_bytes()
    assert not list(out.glob(".dataset.partial"))
    with pytest.raises(DatasetFormatError, match="is not a folder"):
        ingest(IngestConfig(format="folder", root=(tmp_path / "nothing").as_uri(), out=str(out)), progress=False)
    with pytest.raises(DatasetFormatError, match="cannot read nosuchscheme://x"):
        ingest(IngestConfig(format="folder", root="nosuchscheme://x", out=str(out)), progress=False)


def test_a_manifest_written_from_a_frame_is_the_file_written_from_rows(tmp_path):
    from dldc.data.manifest import ManifestMeta, read_manifest_meta, write_manifest

    rows = [
        {"pair_id": f"{i:04x}:{k}", "image_id": f"{i:04x}", "image": f"images/a_{i}.png", "image_sha256": "ab" * 32,
         "width": 32 + i, "height": 32, "caption": f"caption {i} {k} é", "caption_source": "original",
         "scene": "a" if i % 2 else "b", "split": "train"}
        for i in range(50) for k in range(3)
    ]  # fmt: skip
    meta = ManifestMeta(source_format="karpathy", root="../ds", counts={"kept_pairs": 150})
    write_manifest(tmp_path / "rows.parquet", rows, meta)
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0).sort_index()  # a frame as stages hold one
    write_manifest(tmp_path / "frame.parquet", frame.assign(extra=1)[["extra", *reversed(frame.columns)]], meta)
    assert (tmp_path / "rows.parquet").read_bytes() == (tmp_path / "frame.parquet").read_bytes()
    assert read_manifest_meta(tmp_path / "frame.parquet") == read_manifest(tmp_path / "rows.parquet")[1] == meta
