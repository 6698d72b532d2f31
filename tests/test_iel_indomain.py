"""The in-domain scorer: cross-fitted folds, training outputs, determinism, loading, bad inputs.

Everything trains the tiny ``indomain-test`` architecture on a 60-image SynthRS set (32 px).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from dldc.config import IndomainConfig, IngestConfig, ScoreConfig
from dldc.data.images import load_rgb
from dldc.data.ingest import ingest
from dldc.data.manifest import dataset_root, read_manifest, write_manifest
from dldc.data.synthrs import write_synthrs
from dldc.iel.base import CrossFitScorer, Scorer
from dldc.iel.engine import score_manifest
from dldc.iel.fuse import gather_scores
from dldc.iel.indomain import (
    FOLDS_FILE,
    OPEN_CLIP_CONFIG_FILE,
    REPORT_FILE,
    TEXTS_FILE,
    assign_folds,
    create_indomain_model,
    embed_images,
    embed_tokens,
    encode_tokens,
    fold_weights_file,
    hash_fold,
    ids_digest,
    image_to_uint8,
    load_indomain,
    prepare_data,
    rank_auroc,
    resolve_architecture,
    scene_model_file,
    text_keys,
    train_fold,
    train_indomain,
)
from dldc.iel.scene_text import SceneCaptionModel, content_tokens

FOLDS = 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("synth")
    write_synthrs(base / "synthrs", n_images=60, size=32, seed=0, progress=False)
    result = ingest(IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest")), progress=False)
    return str(result.manifest)


def make_cfg(manifest: str, out, **overrides) -> IndomainConfig:
    settings = {
        "manifest": manifest,
        "out": str(out),
        "architecture": "indomain-test",
        "folds": FOLDS,
        "epochs": 30,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 2,
        "seed": 0,
        "device": "cpu",
    }
    return IndomainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory) -> tuple[IndomainConfig, dict]:
    cfg = make_cfg(manifest, tmp_path_factory.mktemp("scorer") / "indomain")
    return cfg, train_indomain(cfg, progress=False)


@pytest.fixture(scope="module")
def frame(manifest) -> pd.DataFrame:
    return read_manifest(manifest)[0]


def test_outputs_written_atomically(trained):
    cfg, report = trained
    out = Path(cfg.out)
    expected = {OPEN_CLIP_CONFIG_FILE, FOLDS_FILE, TEXTS_FILE, REPORT_FILE}
    expected |= {fold_weights_file(k) for k in range(FOLDS)}
    expected |= {scene_model_file(k) for k in range(FOLDS)}
    assert {p.name for p in out.iterdir()} == expected
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    assert report["out"] == cfg.out and report["architecture"] == "indomain-test"
    assert len(report["folds"]) == FOLDS and sum(report["fold_sizes"]) == 60
    for fold in report["folds"]:
        assert len(fold["epoch_loss"]) == cfg.epochs and np.isfinite(fold["final_loss"])
        assert fold["steps"] > 0 and fold["heldout"]["pairs"] == 5 * fold["heldout_images"]
    assert set(report["timings"]) == {"decode_s", "train_s", "total_s"}


def test_folds_partition_images_and_their_captions(trained, frame):
    cfg, _ = trained
    folds = pq.read_table(f"{cfg.out}/{FOLDS_FILE}").to_pandas()
    assert folds["image_id"].is_unique and set(folds["image_id"]) == set(frame["image_id"])
    assert set(folds["fold"]) == set(range(FOLDS))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1  # dealt round-robin: balanced
    scorer = load_indomain(cfg.out, device="cpu")
    pair_fold = frame["image_id"].map(scorer.fold_of)
    # Every caption of an image is held out in its image's fold, and nowhere else.
    assert (frame.assign(fold=pair_fold).groupby("image_id")["fold"].nunique() == 1).all()
    assert dict(zip(folds["image_id"], folds["fold"])) == {i: scorer.fold_of(i) for i in folds["image_id"]}
    # Within each scene the folds are balanced too.
    per_scene = frame.drop_duplicates("image_id").assign(fold=pair_fold).groupby("scene")["fold"]
    assert (per_scene.apply(lambda f: np.ptp(f.value_counts().reindex(range(FOLDS), fill_value=0))) <= 1).all()


def _trained_pairs(frame: pd.DataFrame, scorer, k: int) -> pd.Series:
    """Pairs fold model k may train on: image outside fold k, text (as tokenized) not in fold k."""
    keys = pd.Series(text_keys(scorer.tokenizer, frame["caption"].tolist()), index=frame.index)
    outside = frame["image_id"].map(scorer.fold_of) != k
    return outside & ~keys.isin(set(keys[~outside]))


def test_fold_training_set_excludes_the_fold(trained, frame):
    cfg, report = trained
    scorer = load_indomain(cfg.out, device="cpu")
    images = frame.drop_duplicates("image_id")["image_id"].tolist()
    for fold in report["folds"]:
        k = fold["fold"]
        allowed = _trained_pairs(frame, scorer, k)
        train_ids = sorted(set(frame.loc[allowed, "image_id"]))
        assert fold["train_image_ids_sha256"] == ids_digest(train_ids)
        assert fold["train_images"] == len(train_ids)
        assert fold["heldout_images"] == sum(scorer.fold_of(i) == k for i in images)
        assert fold["train_pairs"] == int(allowed.sum())
        outside = int((frame["image_id"].map(scorer.fold_of) != k).sum())
        assert fold["dropped_pairs"] == outside - int(allowed.sum())
    assert report["fold_rule"]["fold_groups"] == "text"
    assert report["fold_rule"]["dropped_pairs"] == sum(f["dropped_pairs"] for f in report["folds"])


def test_assign_folds_is_seeded_and_unseen_ids_fall_back_to_the_hash():
    ids = [f"{i:016x}" for i in range(50)]
    scenes = ["a", "b"] * 25
    assert assign_folds(ids, scenes, 5, seed=1) == assign_folds(ids, scenes, 5, seed=1)
    assert assign_folds(ids, scenes, 5, seed=1) != assign_folds(ids, scenes, 5, seed=2)
    assert [hash_fold(i, 5, 0) for i in ids] == [hash_fold(i, 5, 0) for i in ids]
    assert set(hash_fold(i, 5, 0) for i in ids) == set(range(5))
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(ids[:2], scenes[:2], 3, seed=0)


def test_same_seed_gives_byte_identical_weights(trained, manifest, tmp_path):
    cfg, _ = trained
    again = make_cfg(manifest, tmp_path / "again")
    train_indomain(again, progress=False)
    for name in [FOLDS_FILE, OPEN_CLIP_CONFIG_FILE] + [fold_weights_file(k) for k in range(FOLDS)]:
        assert (tmp_path / "again" / name).read_bytes() == Path(cfg.out, name).read_bytes(), name
    assert load_indomain(again.out).scorer_id == load_indomain(cfg.out).scorer_id


def test_round_trip_matches_the_in_memory_model(trained, frame, manifest):
    cfg, _ = trained
    scorer = load_indomain(cfg.out, device="cpu")
    assert isinstance(scorer, CrossFitScorer) and scorer.n_folds == FOLDS and scorer.name == "indomain"
    assert scorer.scorer_id.startswith("indomain:") and len(scorer.scorer_id) == len("indomain:") + 12
    fold = scorer.fold_model(1)
    assert isinstance(fold, Scorer) and fold.scorer_id == f"{scorer.scorer_id}#fold1"
    assert fold.context_length == 77 and fold.device == torch.device("cpu")

    # Retrain fold 1 in memory with the same data and settings: same weights, same embeddings.
    name, model_cfg = resolve_architecture(cfg.architecture)
    data = prepare_data(manifest, 32, open_clip.get_tokenizer(name))
    folds = np.array([scorer.fold_of(i) for i in data.image_ids])
    model, _ = train_fold(name, data, folds, 1, cfg)

    meta = read_manifest(manifest)[1]
    root = dataset_root(manifest, meta)
    images = frame.drop_duplicates("image_id").head(7)
    pixels = torch.stack([fold.preprocess(load_rgb(root / p)) for p in images["image"]])
    loaded = fold.encode_images(pixels)
    assert loaded.dtype == torch.float32 and loaded.shape == (7, model_cfg["embed_dim"])
    assert torch.allclose(loaded.norm(dim=1), torch.ones(7), atol=1e-5)
    index = [data.image_ids.index(i) for i in images["image_id"]]
    assert torch.allclose(loaded, embed_images(model, data.pixels[index], torch.device("cpu")), atol=1e-5)

    texts = frame["caption"].head(9).tolist()
    tokens = open_clip.get_tokenizer(name)(texts)
    assert torch.allclose(fold.encode_texts(texts), embed_tokens(model, tokens, torch.device("cpu")), atol=1e-5)
    # preprocess travels to worker processes without the model.
    assert len(pickle.dumps(fold.preprocess)) < 1000
    assert torch.equal(pickle.loads(pickle.dumps(fold.preprocess))(load_rgb(root / images["image"].iloc[0])), pixels[0])


def test_token_counts_are_untruncated(trained):
    fold = load_indomain(trained[0].out, device="cpu").fold_model(0)
    long_text = " ".join(["building"] * 100)
    assert fold.token_counts(["a lake", long_text]) == [4, 102]
    assert fold.encode_texts([long_text]).shape[0] == 1  # truncated, not an error


def test_trimmed_text_encoding_equals_full_context():
    name, _ = resolve_architecture("indomain-test")
    torch.manual_seed(0)
    model = create_indomain_model(name).eval()
    tokens = open_clip.get_tokenizer(name)(["a lake!", "many buildings and green trees are near a river ."])
    with torch.no_grad():
        assert torch.allclose(encode_tokens(model, tokens), model.encode_text(tokens), atol=1e-5)


def test_image_preprocessing_matches_the_training_cache(trained, frame, manifest):
    fold = load_indomain(trained[0].out, device="cpu").fold_model(0)
    root = dataset_root(manifest, read_manifest(manifest)[1])
    image = load_rgb(root / frame["image"].iloc[0])
    cached = image_to_uint8(image, 32).float() / 255
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    assert torch.allclose(fold.preprocess(image), (cached - mean) / std)
    assert fold.preprocess(image.resize((48, 40))).shape == (3, 32, 32)  # non-square input


def test_heldout_pairs_score_above_shuffled_pairs(trained, frame, manifest):
    cfg, report = trained
    assert report["heldout_mean"]["gap"] > 0
    scorer = load_indomain(cfg.out, device="cpu")
    root = dataset_root(manifest, read_manifest(manifest)[1])
    matched, shuffled = [], []
    for k in range(FOLDS):
        model = scorer.fold_model(k)
        part = frame[frame["image_id"].map(scorer.fold_of) == k]
        images = part.drop_duplicates("image_id")
        features = model.encode_images(torch.stack([model.preprocess(load_rgb(root / p)) for p in images["image"]]))
        row = {image_id: i for i, image_id in enumerate(images["image_id"])}
        image_features = features[[row[i] for i in part["image_id"]]]
        texts = model.encode_texts(part["caption"].tolist())
        matched.append((image_features * texts).sum(1))
        # Pair each image with the captions of the next held-out image instead.
        order = np.argsort(part["image_id"].to_numpy(), kind="stable")
        rolled = np.roll(order, 5)
        shuffled.append((image_features[order] * texts[rolled]).sum(1))
    matched, shuffled = torch.cat(matched).numpy(), torch.cat(shuffled).numpy()
    assert matched.mean() > shuffled.mean()
    positive = np.r_[np.ones(len(matched), bool), np.zeros(len(shuffled), bool)]
    assert rank_auroc(np.r_[matched, shuffled], positive) > 0.6


def test_scene_head_is_cross_fitted_and_finds_other_scene_captions(trained, frame):
    cfg, report = trained
    assert report["scene_head"] is True
    scorer = load_indomain(cfg.out, device="cpu")
    assert scorer.has_scene_head
    tokenizer = open_clip.get_tokenizer("local-dir:" + cfg.out)
    images = frame.drop_duplicates("image_id")
    for k in range(FOLDS):
        # The fold's scene model counts exactly the tokens of the pairs its contrastive model trains on.
        outside = frame[_trained_pairs(frame, scorer, k)]
        expected = SceneCaptionModel.fit(
            content_tokens(tokenizer(outside["caption"].tolist()), tokenizer.sot_token_id, tokenizer.eot_token_id),
            outside["scene"].tolist(),
            vocab_size=tokenizer.vocab_size,
        )
        model = scorer.fold_model(k).scene_model
        assert model.scenes == expected.scenes
        np.testing.assert_allclose(model.log_likelihood, expected.log_likelihood)
    # Held-out captions fit their own scene better than the same captions put under another scene.
    own, other = [], []
    scenes = sorted(frame["scene"].unique())
    for _, row in images.iterrows():
        fold_model = scorer.fold_model(scorer.fold_of(row["image_id"]))
        wrong = scenes[(scenes.index(row["scene"]) + 1) % len(scenes)]
        p_own, p_other = fold_model.scene_fit([row["caption"]] * 2, [row["scene"], wrong])
        own.append(p_own)
        other.append(p_other)
    positive = np.r_[np.ones(len(own), bool), np.zeros(len(other), bool)]
    assert rank_auroc(np.r_[own, other], positive) > 0.9
    assert np.isnan(scorer.fold_model(0).scene_fit(["a field"], ["no-such-scene"])[0])


def test_score_reports_and_fuses_the_scene_fit(trained, frame, manifest, tmp_path):
    cfg, _ = trained
    score_cfg = ScoreConfig(manifest=manifest, out=str(tmp_path / "scores"), scorers=[f"indomain:{cfg.out}"])
    result = score_manifest(score_cfg, progress=False)
    scored = result.frame
    assert result.report["scorers"][0]["scene_head"] is True
    assert "indomain_scenefit_clipscore" not in scored
    scorer = load_indomain(cfg.out, device="cpu")
    first = frame.iloc[0]
    expected = scorer.fold_model(scorer.fold_of(first["image_id"])).scene_fit([first["caption"]], [first["scene"]])
    assert scored["indomain_scenefit"].iloc[0] == pytest.approx(expected[0])
    mean_pct = (scored["indomain_scene_pct"] + scored["indomain_scenefit_scene_pct"]) / 2
    np.testing.assert_allclose(scored["fused"], mean_pct)
    # Gathering parts fuses the same way.
    parts = []
    for index in range(2):
        part_cfg = score_cfg.model_copy(update={"out": str(tmp_path / f"part{index}")})
        score_manifest(part_cfg, progress=False, part=(index, 2))
        parts.append(part_cfg.out)
    gathered = gather_scores(parts, tmp_path / "gathered").frame
    np.testing.assert_allclose(gathered["fused"], scored["fused"])


def test_scene_head_can_be_turned_off(manifest, tmp_path):
    cfg = make_cfg(manifest, tmp_path / "plain", epochs=1, scene_head=False)
    report = train_indomain(cfg, progress=False)
    assert report["scene_head"] is False
    assert not list(Path(cfg.out).glob("*.scene.safetensors"))
    scorer = load_indomain(cfg.out, device="cpu")
    assert not scorer.has_scene_head
    with pytest.raises(RuntimeError, match="scene_head=true"):
        scorer.fold_model(0).scene_fit(["x"], ["y"])


def test_training_without_dihedral_views_sees_the_images_as_they_are(manifest, tmp_path):
    weights = {}
    for augment in ("dihedral", "none"):
        cfg = make_cfg(manifest, tmp_path / augment, epochs=1, scene_head=False, augment=augment)
        train_indomain(cfg, progress=False)
        weights[augment] = Path(cfg.out, fold_weights_file(0)).read_bytes()
        assert json.loads(Path(cfg.out, "indomain.json").read_text())["config"]["augment"] == augment
    assert weights["dihedral"] != weights["none"]
    with pytest.raises(ValueError, match="augment"):
        make_cfg(manifest, tmp_path / "bad", augment="rotate")


def test_bad_inputs_raise_clear_errors(manifest, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dldc ingest`"):
        train_indomain(make_cfg(str(tmp_path / "missing.parquet"), tmp_path / "out"), progress=False)
    frame, meta = read_manifest(manifest)
    meta.root = str(dataset_root(manifest, meta))
    small = frame[frame["image_id"].isin(frame["image_id"].unique()[:2])]
    write_manifest(tmp_path / "small.parquet", small.to_dict("records"), meta)
    with pytest.raises(ValueError, match="fewer than folds=3"):
        train_indomain(make_cfg(str(tmp_path / "small.parquet"), tmp_path / "out"), progress=False)
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        train_indomain(make_cfg(manifest, tmp_path / "out", architecture="no-such-arch"), progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(FileNotFoundError, match="indomain.json"):
        load_indomain(tmp_path)
