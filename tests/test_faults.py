"""Faults a resumable stage must survive: a second writer, damaged cached pieces, a pickled checkpoint.

The whole matrix (every stage x every fault, through the CLI) is ``benchmarks/faults.py``; these are
its fast unit checks: the output-folder lock refuses a second writer with a clear message; a
bit-flipped score shard, embedding-store part or fine-tuning checkpoint is detected by its checksum
and recomputed (the result equals the clean run's); a checkpoint that would run code when
unpickled is refused without running it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dldc.config import FinetuneConfig, ScoreConfig
from dldc.data.manifest import ManifestMeta, write_manifest
from dldc.iel.base import l2_normalise
from dldc.iel.engine import score_manifest
from dldc.io import (
    CHECKSUMS_FILE,
    OutputLockedError,
    UnsafeCheckpointError,
    checksum_ok,
    load_tensors,
    lock_path,
    output_lock,
    write_checksum,
    write_checksums,
)

sys.path.insert(0, str(Path(__file__).parent))
from eval_fixtures import make_manifest  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColourScorer:
    """Image: mean colour. Text: the colour word's RGB. Counts the images it encodes."""

    scorer_id = "colour:v1"
    name = "colour"
    context_length = 8
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.images_seen = 0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1) / 255

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(pixels)
        return l2_normalise(pixels.mean(dim=(2, 3)) + 0.05)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        rows = [[c / 255 for c in next((v for k, v in COLOURS.items() if k in t), (90, 90, 90))] for t in texts]
        return l2_normalise(torch.tensor(rows) + 0.05)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]


def _manifest(tmp_path: Path, n_images: int = 9) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    rows = []
    names = list(COLOURS)
    for i in range(n_images):
        colour = names[i % 3]
        path = root / f"{colour}_{i}.png"
        Image.new("RGB", (16, 16), tuple(max(0, c - 5 * i) for c in COLOURS[colour])).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        for k, caption in enumerate([f"a {colour} field", f"a {names[(i + 1) % 3]} roof"]):
            rows.append({"pair_id": f"{i:04x}:{k}", "image_id": f"{i:04x}", "image": path.name, "image_sha256": sha,
                         "width": 16, "height": 16, "caption": caption, "caption_source": "original",
                         "scene": colour, "split": "train"})  # fmt: skip
    manifest = tmp_path / "manifest.parquet"
    write_manifest(manifest, rows, ManifestMeta("test", str(root), ""))
    return manifest


def _flip_byte(path: Path, offset_from_end: int = 9) -> None:
    """Flip every bit of one byte near the end of a file (tensor data, not a header)."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


class _Evil:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_with_a_clear_message_and_writes_nothing(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "scores"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from dldc.io import output_lock\nwith output_lock({str(out)!r}):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError) as refused:
            score_manifest(ScoreConfig(manifest=str(manifest), out=str(out)), [ColourScorer()], progress=False)
        message = str(refused.value)
        assert f"another dldc process (pid {holder.pid}) is writing {out}" in message and "\n" not in message
        assert not out.exists()  # refused before writing anything
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()
    # The kernel drops the lock with its killed holder: the lock file left behind blocks nothing.
    assert lock_path(out).is_file() and lock_path(out).parent == out.parent
    result = score_manifest(ScoreConfig(manifest=str(manifest), out=str(out)), [ColourScorer()], progress=False)
    assert len(result.frame) == 18 and not lock_path(out).exists()  # a finished run deletes its lock file


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_open_files(tmp_path: Path) -> None:
    import fcntl

    with output_lock(tmp_path / "x"), output_lock(tmp_path / "x"):  # a stage calling a stage on its folder
        fd = os.open(lock_path(tmp_path / "x"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # another open file (as another process) cannot take it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with output_lock(tmp_path / "x"):  # released after the outer block
        pass


# ------------------------------------------------------------------------------ checksums


def test_checksum_helpers_catch_truncation_flips_and_missing_records(tmp_path: Path) -> None:
    part = tmp_path / "part.bin"
    part.write_bytes(bytes(range(64)))
    assert not checksum_ok(part)  # no record: not trusted
    write_checksum(part)
    assert checksum_ok(part)
    _flip_byte(part)
    assert not checksum_ok(part)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / name).write_text(name)
    write_checksums(folder)
    from dldc.io import checksums_ok

    assert checksums_ok(folder, required=["a", "b"]) and not checksums_ok(folder, required=["c"])
    (folder / "b").write_text("b" * 2)
    assert not checksums_ok(folder)
    (folder / CHECKSUMS_FILE).write_text("")  # an emptied list vouches for nothing that is required
    assert not checksums_ok(folder, required=["a"])


def test_damaged_score_shard_and_store_part_are_recomputed_not_trusted(tmp_path: Path, caplog) -> None:
    manifest = _manifest(tmp_path)
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "out"), shard_size=6, batch_size=4)
    clean = score_manifest(cfg, [ColourScorer()], progress=False).frame
    out = Path(cfg.out)

    shard = out / "shards" / "shard-00001.parquet"
    _flip_byte(shard, offset_from_end=len(shard.read_bytes()) // 2)
    with caplog.at_level(logging.WARNING):
        again = score_manifest(cfg, [ColourScorer()], progress=False)
    assert again.report["shards_reused"] == again.report["shards_total"] - 1
    assert "shard-00001.parquet does not match its recorded sha256" in caplog.text
    pd.testing.assert_frame_equal(clean, again.frame)

    # A flipped embedding (still a valid safetensors file) would give other scores if it were trusted.
    for stale in (out / "shards").glob("*"):
        stale.unlink()
    part = sorted((out / "embeddings").rglob("image-*.safetensors"))[0]
    _flip_byte(part, offset_from_end=3)
    load_file(str(part))  # still a valid safetensors file: only its checksum tells
    caplog.clear()
    scorer = ColourScorer()
    with caplog.at_level(logging.WARNING):
        recomputed = score_manifest(cfg, [scorer], progress=False)
    assert "dropping embedding-store part" in caplog.text and scorer.images_seen > 0
    pd.testing.assert_frame_equal(clean, recomputed.frame)
    assert all(checksum_ok(p) for p in (out / "embeddings").rglob("*.safetensors"))


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_t2i(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dldc.t2i.models import save_dummy_base

    work = tmp_path_factory.mktemp("faults-t2i")
    return {"work": work, "manifest": make_manifest(work / "data", n_images=8, size=16),
            "base": save_dummy_base(work / "base")}  # fmt: skip


def _finetune_cfg(project: dict[str, Path], out: str) -> FinetuneConfig:
    return FinetuneConfig(
        base=str(project["base"]), manifest=str(project["manifest"]), out=str(project["work"] / out),
        resolution=8, rank=2, steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, sample_steps=0,
        device="cpu", threads=1,
    )  # fmt: skip


def _adapter(cfg: FinetuneConfig) -> dict[str, torch.Tensor]:
    return load_file(str(Path(cfg.out) / "pytorch_lora_weights.safetensors"))


def test_damaged_or_pickled_finetune_checkpoints_are_never_loaded(tiny_t2i: dict[str, Path], caplog) -> None:
    from dldc.t2i.finetune import finetune

    reference = _finetune_cfg(tiny_t2i, "whole")
    finetune(reference, progress=False)
    expected = _adapter(reference)

    # A bit-flipped checkpoint: skipped with a warning, trained from scratch to the same weights.
    flipped = _finetune_cfg(tiny_t2i, "flipped")
    assert finetune(flipped, progress=False, stop_after=3)["stopped_at"] == 3
    checkpoint = Path(flipped.out) / "checkpoints" / "step-00000002"
    _flip_byte(checkpoint / "trainable.safetensors", offset_from_end=5)
    with caplog.at_level(logging.WARNING):
        report = finetune(flipped, progress=False)
    assert report["resumed_from"] == [] and "not resuming from it" in caplog.text
    assert all(torch.equal(expected[k], v) for k, v in _adapter(flipped).items())

    # A finished adapter that no longer matches its recorded sha256 is trained again, not reused.
    _flip_byte(Path(flipped.out) / "pytorch_lora_weights.safetensors", offset_from_end=5)
    report = finetune(flipped, progress=False)
    assert report["throughput"]["steps_this_run"] == 4
    assert all(torch.equal(expected[k], v) for k, v in _adapter(flipped).items())

    # optimizer.pt replaced by a pickle that would run code: its checksum fails, it is never opened.
    pickled = _finetune_cfg(tiny_t2i, "pickled")
    finetune(pickled, progress=False, stop_after=3)
    checkpoint = Path(pickled.out) / "checkpoints" / "step-00000002"
    marker = tiny_t2i["work"] / "code-ran"
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps({"state": _Evil(marker)}))
    assert finetune(pickled, progress=False)["resumed_from"] == [] and not marker.exists()
    assert all(torch.equal(expected[k], v) for k, v in _adapter(pickled).items())

    # ... and with its checksum forged to match, torch.load(weights_only=True) refuses it.
    forged = _finetune_cfg(tiny_t2i, "forged")
    finetune(forged, progress=False, stop_after=3)
    checkpoint = Path(forged.out) / "checkpoints" / "step-00000002"
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps({"state": _Evil(marker)}))
    write_checksums(checkpoint, ["trainable.safetensors", "optimizer.pt", "state.json"])
    with pytest.raises(UnsafeCheckpointError, match="could run code when loaded"):
        finetune(forged, progress=False)
    assert not marker.exists()


def test_load_tensors_refuses_pickled_code_and_reads_plain_state(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "checkpoint.pt"
    evil.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_tensors(evil)
    assert not marker.exists() and "refusing" in str(refused.value) and "weights_only=False" not in str(refused.value)
    plain = tmp_path / "plain.pt"
    torch.save({"step": 3, "w": torch.ones(2)}, plain)
    assert load_tensors(plain)["step"] == 3


def test_lock_files_stay_out_of_dvc_outputs_and_dependencies() -> None:
    from fnmatch import fnmatch

    # The lock sits beside its folder; data/select/trials (a dependency of `select`) holds the trials'.
    lines = (Path(__file__).resolve().parents[1] / ".dvcignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    name = lock_path("data/select/trials/r0.2").name
    assert name == ".r0.2.dldc.lock" and any(fnmatch(name, pattern) for pattern in patterns)
