"""The IEL engine: exact scores, dedup, cache, shards, kill-and-resume, fan-out (toy scorers), and the routes
of the library's own scorers."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dldc.config import ScoreConfig
from dldc.data.manifest import ManifestMeta, write_manifest
from dldc.iel.base import CrossFitScorer, Scorer, l2_normalise
from dldc.iel.engine import score_manifest
from dldc.iel.fuse import gather_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))  # iel_fixtures (--import-mode=importlib)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ToyScorer:
    """Image: mean colour. Text: the colour word's RGB. Counts every call."""

    context_length = 6
    device = torch.device("cpu")

    def __init__(self, scorer_id="toy:v1", name="toy", fail_after=None):
        self.scorer_id, self.name, self.fail_after = scorer_id, name, fail_after
        self.image_calls = self.text_calls = self.images_seen = self.texts_seen = 0

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1) / 255

    def encode_images(self, pixels):
        self.image_calls += 1
        self.images_seen += len(pixels)
        if self.fail_after is not None and self.image_calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        return l2_normalise(pixels.mean(dim=(2, 3)) + 0.05)

    def encode_texts(self, texts):
        self.text_calls += 1
        self.texts_seen += len(texts)
        rows = [[c / 255 for c in next((v for k, v in COLOURS.items() if k in t), (90, 90, 90))] for t in texts]
        return l2_normalise(torch.tensor(rows) + 0.05)

    def token_counts(self, texts):
        return [len(t.split()) + 2 for t in texts]


class ToyCrossFit:
    """Two folds by image id parity; fold k's model has its own id."""

    name = "xfit"
    n_folds = 2
    scorer_id = "xfit:v1"

    def __init__(self):
        self.models = [ToyScorer(f"xfit:v1#fold{k}", "xfit") for k in range(2)]

    def fold_of(self, image_id):
        return int(image_id, 16) % 2

    def fold_model(self, fold):
        return self.models[fold]


def _manifest(tmp_path, n_images=12, extra_captions=()):
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    rows = []
    names = list(COLOURS)
    for i in range(n_images):
        colour = names[i % 3]
        path = root / f"{colour}_{i}.png"
        shade = tuple(max(0, c - 3 * i) for c in COLOURS[colour])
        Image.new("RGB", (16, 16), shade).save(path)
        import hashlib

        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        captions = [f"a {colour} field", f"a {names[(i + 1) % 3]} roof", "a very long caption that goes on"]
        captions += list(extra_captions)
        for k, caption in enumerate(captions):
            rows.append(
                {
                    "pair_id": f"{i:04x}:{k}",
                    "image_id": f"{i:04x}",
                    "image": path.name,
                    "image_sha256": sha,
                    "width": 16,
                    "height": 16,
                    "caption": caption,
                    "caption_source": "original",
                    "scene": colour,
                    "split": "train",
                }
            )
    manifest = tmp_path / "manifest.parquet"
    write_manifest(manifest, rows, ManifestMeta("test", str(root), "now"))
    return manifest


@pytest.mark.slow
def test_library_scorers_take_the_engine_route_of_their_protocol(tmp_path):
    # The engine tells a cross-fitted scorer from a single model by the protocols alone
    # (isinstance(s, CrossFitScorer) and not isinstance(s, Scorer)); the library's own scorers
    # must land on the right side: open_clip scores every pair with one model, the in-domain
    # scorer scores each pair with the fold model that never saw its image.
    from iel_fixtures import write_open_clip_config

    from dldc.config import IndomainConfig
    from dldc.data.images import load_rgb
    from dldc.iel.factory import create_scorer
    from dldc.iel.indomain import load_indomain, train_indomain

    manifest = _manifest(tmp_path)
    single = create_scorer(f"open_clip:{write_open_clip_config(tmp_path / 'oc')}", device="cpu")
    settings = {"architecture": "indomain-test", "folds": 2, "epochs": 1, "batch_size": 16, "device": "cpu"}
    # Every image here shares "a very long caption that goes on": text folds would (rightly) leave
    # nothing to train on; this test is about the engine's route, so folds by image.
    settings["fold_groups"] = "image"
    with pytest.raises(ValueError, match="drop rule"):
        text = {**settings, "fold_groups": "text"}
        train_indomain(IndomainConfig(manifest=str(manifest), out=str(tmp_path / "text"), **text), progress=False)
    train_indomain(IndomainConfig(manifest=str(manifest), out=str(tmp_path / "indomain"), **settings), progress=False)
    crossfit = load_indomain(tmp_path / "indomain", device="cpu")
    assert isinstance(single, Scorer) and not isinstance(single, CrossFitScorer)
    assert isinstance(crossfit, CrossFitScorer) and not isinstance(crossfit, Scorer)
    assert all(isinstance(crossfit.fold_model(k), Scorer) for k in range(2))

    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "out"), workers=1)
    result = score_manifest(cfg, [single, crossfit], progress=False)
    described = {info["name"]: info for info in result.report["scorers"]}
    assert described[crossfit.name]["folds"] == 2 and "folds" not in described[single.name]
    frame = result.frame.set_index("pair_id")
    rows = pd.read_parquet(manifest)
    images = [load_rgb(tmp_path / "ds" / name) for name in rows["image"]]

    def cosines(scorer):  # every pair under one model, computed directly
        pixels = torch.stack([scorer.preprocess(image) for image in images])
        return (scorer.encode_images(pixels) * scorer.encode_texts(rows["caption"].tolist())).sum(-1).numpy()

    np.testing.assert_allclose(frame.loc[rows["pair_id"], single.name], cosines(single), atol=1e-5)
    folds = rows["image_id"].map(crossfit.fold_of).to_numpy()
    assert set(folds) == {0, 1}  # both fold models are exercised
    by_fold = [cosines(crossfit.fold_model(k)) for k in range(2)]
    heldout = np.where(folds == 0, by_fold[0], by_fold[1])
    np.testing.assert_allclose(frame.loc[rows["pair_id"], crossfit.name], heldout, atol=1e-5)
    assert np.abs(by_fold[0] - by_fold[1]).min() > 1e-3  # the folds differ: a wrong route would show


def test_scores_are_exact_cosines_with_each_image_and_caption_encoded_once(tmp_path):
    manifest = _manifest(tmp_path)
    scorer = ToyScorer()
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "out"), batch_size=5, shard_size=7)
    result = score_manifest(cfg, [scorer], progress=False)
    frame = pd.read_parquet(result.scores)
    assert len(frame) == 36 and scorer.images_seen == 12
    assert scorer.texts_seen == len(set(pd.read_parquet(manifest)["caption"]))
    # Direct computation with the same scorer.
    manifest_frame = pd.read_parquet(manifest).set_index("pair_id")
    for row in frame.sample(8, random_state=0).itertuples():
        image = Image.open(tmp_path / "ds" / manifest_frame.loc[row.pair_id, "image"]).convert("RGB")
        expected = (
            scorer.encode_images(scorer.preprocess(image)[None])
            @ scorer.encode_texts([manifest_frame.loc[row.pair_id, "caption"]]).T
        ).item()
        assert row.toy == pytest.approx(expected, abs=1e-6)
    assert (frame["toy_clipscore"] == 100 * frame["toy"].clip(lower=0)).all()
    assert frame["toy_truncated"].sum() == 12 and result.report["truncated_captions"] == {"toy": 12}
    # Matching colour captions score highest within each image.
    best = frame.loc[frame.groupby("image_id")["toy"].idxmax(), "pair_id"]
    assert set(best.str.endswith(":0")) == {True}
    assert frame["scene_percentile"].between(0, 1).all() and frame["disagree"].sum() == 0
    assert result.report["shards_total"] == 6


def test_rerun_reuses_shards_and_new_captions_cost_only_themselves(tmp_path):
    manifest = _manifest(tmp_path)
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "out"), shard_size=10)
    first = score_manifest(cfg, [ToyScorer()], progress=False)
    again = ToyScorer()
    second = score_manifest(cfg, [again], progress=False)
    assert again.image_calls == again.text_calls == 0 and second.report["shards_reused"] == 4
    pd.testing.assert_frame_equal(first.frame, second.frame)
    grown = _manifest(tmp_path, extra_captions=["a brand new green caption"])
    cfg2 = cfg.model_copy(update={"manifest": str(grown)})
    third = ToyScorer()
    result = score_manifest(cfg2, [third], progress=False)
    assert third.images_seen == 0 and third.texts_seen == 1
    assert result.report["texts_encoded"] == 1 and len(result.frame) == 48


def test_killed_run_resumes_with_identical_result(tmp_path):
    manifest = _manifest(tmp_path, n_images=30)
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "a"), shard_size=9, batch_size=2)
    reference = score_manifest(cfg, [ToyScorer()], progress=False).frame
    killed_cfg = cfg.model_copy(update={"out": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        score_manifest(killed_cfg, [ToyScorer(fail_after=4)], progress=False)
    assert len(list((tmp_path / "b" / "shards").glob("*.parquet"))) >= 1
    assert not (tmp_path / "b" / "scores.parquet").exists()
    resumed_scorer = ToyScorer()
    resumed = score_manifest(killed_cfg, [resumed_scorer], progress=False)
    assert resumed.report["shards_reused"] >= 1 and resumed_scorer.images_seen < 30
    pd.testing.assert_frame_equal(reference, resumed.frame)


def test_cross_fitted_scorer_uses_each_images_fold_model(tmp_path):
    manifest = _manifest(tmp_path)
    xfit = ToyCrossFit()
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "out"), workers=1)
    frame = score_manifest(cfg, [xfit, ToyScorer()], progress=False).frame
    assert xfit.models[0].images_seen == 6 and xfit.models[1].images_seen == 6
    assert np.allclose(frame["xfit"], frame["toy"])  # same toy maths in every fold
    assert {"xfit_scene_pct", "toy_scene_pct", "fused"} <= set(frame.columns)


def test_fan_out_parts_gather_to_the_same_scores(tmp_path):
    manifest = _manifest(tmp_path)
    whole = score_manifest(
        ScoreConfig(manifest=str(manifest), out=str(tmp_path / "whole")), [ToyScorer()], progress=False
    ).frame
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}"
        score_manifest(ScoreConfig(manifest=str(manifest), out=str(out)), [ToyScorer()], progress=False, part=(i, 3))
        parts.append(out)
    gathered = gather_scores(parts, tmp_path / "gathered").frame
    pd.testing.assert_frame_equal(whole, gathered)
    with pytest.raises(ValueError, match="more than one part"):
        gather_scores([parts[0], parts[0]], tmp_path / "dup")


def test_duplicate_scorer_names_are_refused(tmp_path):
    manifest = _manifest(tmp_path, n_images=3)
    with pytest.raises(ValueError, match="distinct"):
        score_manifest(
            ScoreConfig(manifest=str(manifest), out=str(tmp_path / "o")), [ToyScorer(), ToyScorer()], progress=False
        )


class OomScorer(ToyScorer):
    """Runs out of memory on batches larger than 2, like a GPU would."""

    def encode_images(self, pixels):
        if len(pixels) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().encode_images(pixels)

    def encode_texts(self, texts):
        if len(texts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().encode_texts(texts)


def test_out_of_memory_halves_the_batch_and_gives_the_same_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    manifest = _manifest(tmp_path)
    reference = score_manifest(
        ScoreConfig(manifest=str(manifest), out=str(tmp_path / "a")), [ToyScorer()], progress=False
    )
    cfg = ScoreConfig(manifest=str(manifest), out=str(tmp_path / "b"), batch_size=8)
    result = score_manifest(cfg, [OomScorer()], progress=False)
    assert result.report["oom_retries"] >= 2
    pd.testing.assert_frame_equal(reference.frame, result.frame, atol=1e-6)


def test_embedding_store_serves_every_part_between_appends_and_after_reopening(tmp_path):
    from dldc.iel.store import EmbeddingStore, text_key

    store = EmbeddingStore(tmp_path, "toy:scorer")
    rng = np.random.default_rng(0)
    expected, tokens = {}, {}
    for part in range(40):  # many small parts, a lookup across all of them after each one
        texts = [f"caption {part}-{i}" for i in range(int(rng.integers(1, 9)))]
        keys = [text_key(t) for t in texts]
        vectors = torch.tensor(rng.normal(size=(len(keys), 3)), dtype=torch.float32)
        counts = [int(c) for c in rng.integers(1, 90, len(keys))]
        assert store.missing("text", keys + keys[:1]) == keys
        store.add("text", keys, vectors, counts)
        expected.update(zip(keys, vectors))
        tokens.update(zip(keys, counts))
        sample = list(expected)[:: max(1, len(expected) // 7)] + keys
        assert torch.equal(store.get("text", sample), torch.stack([expected[k] for k in sample]))
        assert store.tokens(sample) == [tokens[k] for k in sample]
    assert store.count("text") == len(expected) and store.count("image") == 0
    reopened = EmbeddingStore(tmp_path, "toy:scorer")
    keys = list(expected)[::-1]
    assert torch.equal(reopened.get("text", keys), torch.stack([expected[k] for k in keys]))
    assert reopened.tokens(keys) == [tokens[k] for k in keys] and reopened.missing("text", keys) == []


def test_each_scorers_preprocess_is_batched_once_per_run(tmp_path, monkeypatch):
    # ToyScorer.preprocess is a bound method, a new object at every access: the engine must still
    # find its batched form again (and never hand one scorer's to another) across shards.
    from dldc.iel import engine

    made = []
    real = engine.batch_preprocess
    monkeypatch.setattr(engine, "batch_preprocess", lambda transform: made.append(transform) or real(transform))
    first, second = ToyScorer("toy:a", "a"), ToyScorer("toy:b", "b")
    cfg = ScoreConfig(manifest=str(_manifest(tmp_path)), out=str(tmp_path / "out"), shard_size=5)
    result = score_manifest(cfg, [first, second], progress=False)
    assert result.report["shards_total"] > 3
    assert [m.__self__ for m in made] == [first, second]
