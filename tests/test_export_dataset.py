"""`dldc export-dataset`: the cleaned set in its source's format; ingest of the export gives the kept pairs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from dldc.cli import main
from dldc.config import IngestConfig
from dldc.data.export import PROVENANCE_FILE, export_dataset
from dldc.data.ingest import ingest
from dldc.data.manifest import read_manifest, write_manifest

KEYS = ["image_id", "image", "caption", "scene", "split"]


@pytest.fixture
def rsicd_small(rsicd_root, tmp_path):
    """30 real RSICD images with their own Karpathy entries (imgid, sentids, tokens) and scene lists."""
    source = json.loads((rsicd_root / "dataset_rsicd.json").read_text())
    root = tmp_path / "rsicd-small"
    (root / "images").mkdir(parents=True)
    shutil.copytree(rsicd_root / "txtclasses_rsicd", root / "txtclasses_rsicd")
    entries = source["images"][::62][:30]
    for entry in entries:
        shutil.copy(rsicd_root / "images" / entry["filename"], root / "images" / entry["filename"])
    (root / "dataset_rsicd.json").write_text(json.dumps({**source, "images": entries}))
    return root


def _clean(manifest_path, out):
    """A stand-in for EGL + select: drop every third pair, repair two captions; the manifest and dropped.parquet."""
    frame, meta = read_manifest(manifest_path)
    drop = frame.index % 3 == 1
    kept = frame[~drop].copy()
    repaired = kept.index[:2]
    kept.loc[repaired, "caption"] = ["a lake at the top left. <b>trees</b> & a road", "planes near a terminal"]
    kept.loc[repaired, "caption_source"] = "egl:mask2text:synthrs"
    out.mkdir()
    write_manifest(out / "cleaned.parquet", kept.to_dict("records"), meta)
    dropped = frame[drop].assign(rank=1, scene_size=10, ratio=0.3, fused=0.1, scene_percentile=0.05)
    dropped.to_parquet(out / "dropped.parquet")
    return frame, kept, out / "cleaned.parquet", out / "dropped.parquet"


def _pairs(frame):
    return frame[KEYS].sort_values(KEYS).reset_index(drop=True)


def test_karpathy_export_reingests_to_exactly_the_kept_pairs(rsicd_small, tmp_path):
    first = ingest(IngestConfig(root=str(rsicd_small), out=str(tmp_path / "ingest")), progress=False)
    frame, kept, cleaned, dropped = _clean(first.manifest, tmp_path / "select")
    report = export_dataset(first.manifest, cleaned, tmp_path / "export", dropped=dropped, rejects=first.rejects)
    assert report["format"] == "karpathy" and report["annotations"] == "dataset_rsicd.json"
    assert report["counts"]["kept"] == len(kept) and report["counts"]["dropped"] == len(frame) - len(kept)
    assert report["counts"]["repaired_kept"] == 2

    again = ingest(IngestConfig(root=str(tmp_path / "export"), out=str(tmp_path / "again")), progress=False)
    reread, _ = read_manifest(again.manifest)
    pd.testing.assert_frame_equal(_pairs(reread), _pairs(kept))
    assert len(pd.read_parquet(again.rejects)) == 0

    # The source's own structure survives: ids, splits, sentence fields; repaired sentences rewritten.
    document = json.loads((rsicd_small / "dataset_rsicd.json").read_text())
    source = {e["filename"]: e for e in document["images"]}
    text = (tmp_path / "export" / "dataset_rsicd.json").read_text()
    # Streamed out entry by entry, yet the bytes json.dumps gives the whole document, members in order.
    assert text == json.dumps(json.loads(text), ensure_ascii=False)
    assert list(json.loads(text)) == list(document) and len(document) > 1
    exported = json.loads(text)["images"]
    for entry in exported:
        original = source[entry["filename"]]
        assert entry["imgid"] == original["imgid"] and entry["split"] == original["split"]
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        assert set(entry["sentids"]) <= set(original["sentids"])
    repaired = [s for e in exported for s in e["sentences"] if s["raw"] == "planes near a terminal"]
    assert repaired and repaired[0]["tokens"] == ["planes", "near", "a", "terminal"]


def test_provenance_has_every_pair_with_its_fate(rsicd_small, tmp_path):
    first = ingest(IngestConfig(root=str(rsicd_small), out=str(tmp_path / "ingest")), progress=False)
    frame, kept, cleaned, dropped = _clean(first.manifest, tmp_path / "select")
    export_dataset(first.manifest, cleaned, tmp_path / "export", dropped=dropped)
    table = pd.read_parquet(tmp_path / "export" / PROVENANCE_FILE).set_index("pair_id")
    assert sorted(table.index) == sorted(frame["pair_id"])
    assert table.loc[kept["pair_id"], "status"].eq("kept").all()
    gone = frame.loc[~frame["pair_id"].isin(kept["pair_id"]), "pair_id"]
    assert table.loc[gone, "status"].eq("dropped").all()
    scenes = frame.set_index("pair_id").loc[gone, "scene"]
    assert table.loc[gone, "reason"].tolist() == [f"rank 1 of 10 in {s}, below the cut of ratio 0.3" for s in scenes]
    fixed = kept.iloc[0]
    row = table.loc[fixed["pair_id"]]
    assert row["final_caption"] == fixed["caption"] and row["caption_source"] == "egl:mask2text:synthrs"
    assert row["original_caption"] == frame.set_index("pair_id").loc[fixed["pair_id"], "caption"]


def _textured(seed, size=48):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_folder_export_via_the_cli_and_a_foreign_cleaned_manifest_is_refused(tmp_path):
    root = tmp_path / "folder"
    lines = []
    for number, scene in enumerate(("beach", "forest")):
        (root / scene).mkdir(parents=True)
        for i in range(3):
            _textured(10 * number + i).save(root / scene / f"{i}.png")
            lines += [{"image": f"{scene}/{i}.png", "caption": f"{scene} {i} caption {k}"} for k in range(2)]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    first = ingest(IngestConfig(format="folder", root=str(root), out=str(tmp_path / "ingest")), progress=False)
    frame, kept, cleaned, dropped = _clean(first.manifest, tmp_path / "select")

    args = ["-S", "tracking.enabled=false", "export-dataset", "--original", str(first.manifest), "--cleaned",
            str(cleaned), "--dropped", str(dropped), "--rejects", str(first.rejects), "--out", str(tmp_path / "export")]
    missing = CliRunner().invoke(main, args)  # the default EGL lineage (data/captions/...) is not here
    assert missing.exit_code != 0 and "export_dataset.scores" in missing.output and "null" in missing.output
    args = ["-S", "export_dataset.scores=null", "-S", "export_dataset.captions=null", *args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"{len(kept)} pairs kept (2 with repaired captions)" in result.output
    again = ingest(IngestConfig(format="folder", root=str(tmp_path / "export"), out=str(tmp_path / "again")),
                   progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(_pairs(read_manifest(again.manifest)[0]), _pairs(kept))

    other = kept.assign(pair_id=kept["pair_id"] + "x")
    write_manifest(tmp_path / "other.parquet", other.to_dict("records"), read_manifest(cleaned)[1])
    result = CliRunner().invoke(main, [str(tmp_path / "other.parquet") if a == str(cleaned) else a for a in args])
    assert result.exit_code != 0 and "comes from another dataset" in result.output


def test_exports_that_cannot_keep_the_source_layout_are_refused(rsicd_small, tmp_path):
    # Annotations in a subfolder of the root are written at the same place in the export.
    (rsicd_small / "ann").mkdir()
    (rsicd_small / "dataset_rsicd.json").rename(rsicd_small / "ann" / "dataset_rsicd.json")
    cfg = IngestConfig(root=str(rsicd_small), out=str(tmp_path / "ingest"), annotations="ann/dataset_rsicd.json")
    first = ingest(cfg, progress=False)
    _, kept, cleaned, dropped = _clean(first.manifest, tmp_path / "select")
    report = export_dataset(first.manifest, cleaned, tmp_path / "export", dropped=dropped)
    assert report["annotations"] == "ann/dataset_rsicd.json" and (tmp_path / "export" / "ann").is_dir()
    # A Karpathy file is rewritten from the source's own entries: a folder dataset has none.
    folder = tmp_path / "folder"
    (folder / "lake").mkdir(parents=True)
    _textured(1).save(folder / "lake" / "0.png")
    (folder / "captions.jsonl").write_text(json.dumps({"image": "lake/0.png", "caption": "a lake"}) + "\n")
    second = ingest(IngestConfig(format="folder", root=str(folder), out=str(tmp_path / "i2")), progress=False)
    with pytest.raises(ValueError, match="export it as folder"):
        export_dataset(second.manifest, second.manifest, tmp_path / "e2", fmt="karpathy")
    # An image reached through `..` (back into the root) has no place under the export.
    frame, meta = read_manifest(second.manifest)
    frame["image"] = "../folder/lake/0.png"
    write_manifest(tmp_path / "escaping.parquet", frame.to_dict("records"), meta)
    escaping = tmp_path / "i2" / "escaping.parquet"
    shutil.move(tmp_path / "escaping.parquet", escaping)
    with pytest.raises(ValueError, match="leaves the dataset folder"):
        export_dataset(escaping, escaping, tmp_path / "e3")
    assert not (tmp_path / "e3").exists() and not (tmp_path / "folder" / "folder").exists()
