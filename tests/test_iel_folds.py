"""Text-aware cross-fitting: repeated caption text cannot leak from a fold model's training into
the pairs it scores (grouping, the oversize fallback, the drop rule, EGL candidates' fold)."""

from __future__ import annotations

import random

import numpy as np
import open_clip
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import dldc.iel.indomain_train as indomain_train
from dldc.config import IndomainConfig, IngestConfig, ScoreConfig
from dldc.data.images import load_rgb
from dldc.data.ingest import ingest
from dldc.data.manifest import MANIFEST_SCHEMA, dataset_root, read_manifest, write_manifest
from dldc.data.synthrs import write_synthrs
from dldc.egl.base import Attempt, CaptionRequest
from dldc.egl.retrieval import RetrievalCaptioner
from dldc.iel.engine import score_manifest
from dldc.iel.indomain import (
    TEXTS_FILE,
    group_folds,
    load_indomain,
    scoring_fold,
    text_keys,
    texts_trained_by,
    train_indomain,
    training_pairs,
)
from dldc.iel.indomain_train import TrainingData

GENERIC = "Many  buildings are in a commercial area ."  # normalises to the key below
GENERIC_KEY = "many buildings are in a commercial area ."


# --------------------------------------------------------------------------- grouping (no training)


def _fold_sizes(folds: dict[str, int], n_folds: int) -> list[int]:
    return np.bincount(list(folds.values()), minlength=n_folds).tolist()


def test_images_joined_by_a_shared_text_share_a_fold():
    ids = [f"img{i:02d}" for i in range(12)]
    scenes = ["x"] * 6 + ["y"] * 6
    texts = [[f"own {i}"] for i in range(12)]
    texts[0].append("t1")
    texts[1] += ["t1", "t2"]  # 0-1 by t1, 1-2 by t2: one component through image 1
    texts[2].append("t2")
    texts[7].append("t3")
    texts[9].append("t3")
    plan = group_folds(ids, scenes, texts, n_folds=3, seed=0, max_group_share=1.0)
    assert plan.folds["img00"] == plan.folds["img01"] == plan.folds["img02"]
    assert plan.folds["img07"] == plan.folds["img09"]
    assert plan.components == 12 - 3 and plan.largest_component == 3 and plan.split_components == 0
    assert plan.cut_texts == [] and plan.spanning_texts() == []
    # Every text sits in exactly one fold: one bit set.
    assert all(bin(mask).count("1") == 1 for mask in plan.text_folds.values())
    assert sorted(_fold_sizes(plan.folds, 3)) == [4, 4, 4]


def test_a_component_too_large_for_a_fold_is_split_at_its_most_shared_text():
    ids = [f"img{i:02d}" for i in range(30)]
    scenes = ["x", "y", "z"] * 10
    texts = [[f"own {i}"] for i in range(30)]
    for i in range(12):
        texts[i].append("generic")  # 12 images > max_group = floor(0.3 * 30 / 3) = 3
    texts[0].append("specific a")
    texts[1].append("specific a")
    texts[2].append("specific b")
    texts[3].append("specific b")
    plan = group_folds(ids, scenes, texts, n_folds=3, seed=0, max_group_share=0.3)
    assert plan.max_group == 3 and plan.split_components == 1 and plan.largest_component == 12
    assert plan.cut_texts == ["generic"]  # only the hub is cut: the specific texts still group
    assert plan.folds["img00"] == plan.folds["img01"] and plan.folds["img02"] == plan.folds["img03"]
    assert plan.spanning_texts() == ["generic"]  # 12 images cannot stay in one balanced fold
    assert max(_fold_sizes(plan.folds, 3)) - min(_fold_sizes(plan.folds, 3)) <= 1


def test_group_folds_is_deterministic_whatever_the_input_order():
    rng = random.Random(0)
    ids = [f"{i:016x}" for i in range(40)]
    scenes = [rng.choice("abc") for _ in ids]
    texts = [[f"t{rng.randrange(25)}", f"u{i}"] for i in range(40)]
    plan = group_folds(ids, scenes, texts, 4, seed=7, max_group_share=0.4)
    order = list(range(40))
    rng.shuffle(order)
    shuffled = group_folds([ids[i] for i in order], [scenes[i] for i in order], [texts[i] for i in order], 4, 7, 0.4)
    assert shuffled.folds == plan.folds and shuffled.cut_texts == plan.cut_texts
    assert group_folds(ids, scenes, texts, 4, seed=7, max_group_share=0.4).folds == plan.folds
    # Machine-independent: the placement follows sha256 of the ids, so this tiny case is pinned.
    tiny = group_folds(["a", "b", "c", "d", "e"], ["s"] * 5, [["p"], ["p"], ["q"], ["r"], ["s"]], 2, 0, 1.0)
    assert tiny.folds == PINNED_TINY


PINNED_TINY = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0}  # recorded once; any machine must agree


def _data(captions_of_image: list[list[str]], scenes: list[str]) -> TrainingData:
    """A TrainingData without pixels worth decoding: the fold rules only read ids, texts and pairs."""
    captions = sorted({c for cs in captions_of_image for c in cs})
    pair_image = np.array([i for i, cs in enumerate(captions_of_image) for _ in cs], dtype=np.int64)
    pair_caption = np.array([captions.index(c) for cs in captions_of_image for c in cs], dtype=np.int64)
    bounds = np.cumsum([0] + [len(cs) for cs in captions_of_image])
    return TrainingData(
        image_ids=[f"img{i}" for i in range(len(captions_of_image))],
        scenes=scenes,
        pixels=torch.zeros(len(captions_of_image), 3, 2, 2, dtype=torch.uint8),
        captions=captions,
        tokens=torch.zeros(len(captions), 77, dtype=torch.long),
        pair_image=pair_image,
        pair_caption=pair_caption,
        pairs_of_image=[np.arange(bounds[i], bounds[i + 1]) for i in range(len(captions_of_image))],
        caption_keys=text_keys(open_clip.get_tokenizer("ViT-B-32"), captions),
    )


def test_training_of_fold_k_drops_pairs_whose_normalised_text_occurs_in_fold_k():
    data = _data(
        [[GENERIC, "a river"], ["a lake"], [GENERIC_KEY, "a road"], ["a port"]],  # same text, spelt apart
        ["x", "x", "y", "y"],
    )
    folds = np.array([0, 0, 1, 1])
    # Fold 0 trains on images 2 and 3, minus image 2's generic caption (the text sits on image 0).
    assert training_pairs(data, folds, 0).tolist() == [False, False, False, False, True, True]
    assert training_pairs(data, folds, 1).tolist() == [False, True, True, False, False, False]
    # Image folds (the earlier rule) keep them: the leak this guards against.
    assert training_pairs(data, folds, 0, "image").tolist() == [False, False, False, True, True, True]
    trained = texts_trained_by(data, folds, 2)
    assert trained[GENERIC_KEY] == 0 and trained["a road"] == 0b01 and trained["a river"] == 0b10


def test_scoring_fold_avoids_a_model_that_trained_on_the_text():
    assert scoring_fold(1, trained_by=0b000, n_folds=3) == 1  # a new text: the image's fold
    assert scoring_fold(1, trained_by=0b101, n_folds=3) == 1  # its fold never trained on it
    assert scoring_fold(0, trained_by=0b011, n_folds=3) == 2  # the only model that did not
    assert scoring_fold(2, trained_by=0b111, n_folds=3) == 2  # nowhere clean (image folds): keep


# --------------------------------------------------------------------------- a trained scorer


@pytest.fixture(scope="module")
def leaky_manifest(tmp_path_factory) -> str:
    """SynthRS-60 with repeated text: a generic caption on 12 images (too many to keep in one of 3
    folds) and 6 images given all the captions of another image (copy-paste swaps)."""
    base = tmp_path_factory.mktemp("leaky")
    write_synthrs(base / "synthrs", n_images=60, size=32, seed=0, progress=False)
    manifest = ingest(IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest")), progress=False).manifest
    frame, meta = read_manifest(manifest)
    meta.root = str(dataset_root(manifest, meta))
    images = sorted(frame["image_id"].unique())
    first_pair = frame.groupby("image_id").head(1).index
    frame.loc[first_pair[frame.loc[first_pair, "image_id"].isin(images[:12])], "caption"] = GENERIC
    for recipient, donor in zip(images[20:26], images[40:46]):
        donor_captions = frame.loc[frame["image_id"] == donor, "caption"].tolist()
        rows = frame.index[frame["image_id"] == recipient]
        frame.loc[rows, "caption"] = [donor_captions[k % len(donor_captions)] for k in range(len(rows))]
    path = base / "leaky" / "manifest.parquet"
    write_manifest(path, frame[MANIFEST_SCHEMA.names].to_dict("records"), meta)
    return str(path)


@pytest.fixture(scope="module")
def spied_training(leaky_manifest, tmp_path_factory):
    """Train 3 folds while recording the caption texts every contrastive batch used, per fold."""
    seen: dict[int, set[str]] = {}
    current = {}
    patch = pytest.MonkeyPatch()
    original_fold, original_batch = indomain_train.train_fold, indomain_train.batch_texts

    def train_fold(model_name, data, folds, fold, cfg, progress=False):
        current["fold"], current["data"] = fold, data
        return original_fold(model_name, data, folds, fold, cfg, progress)

    def batch_texts(data, images, chosen_pairs):
        caption_ids, positive = original_batch(data, images, chosen_pairs)
        seen.setdefault(current["fold"], set()).update(data.caption_keys[c] for c in caption_ids)
        return caption_ids, positive

    patch.setattr(indomain_train, "train_fold", train_fold)
    patch.setattr(indomain_train, "batch_texts", batch_texts)
    cfg = IndomainConfig(
        manifest=leaky_manifest, out=str(tmp_path_factory.mktemp("scorer") / "indomain"),
        architecture="indomain-test", folds=3, epochs=3, batch_size=8, device="cpu",
    )  # fmt: skip
    try:
        report = train_indomain(cfg, progress=False)
    finally:
        patch.undo()
    return cfg, report, seen


def test_no_fold_model_trains_on_a_text_that_occurs_in_the_fold_it_scores(spied_training, leaky_manifest):
    cfg, report, seen = spied_training
    frame, _ = read_manifest(leaky_manifest)
    scorer = load_indomain(cfg.out, device="cpu")
    keys = pd.Series(text_keys(scorer.tokenizer, frame["caption"].tolist()))
    fold = frame["image_id"].map(scorer.fold_of)
    assert set(seen) == {0, 1, 2}
    for k in range(3):
        in_fold = set(keys[fold == k])
        assert seen[k] and not seen[k] & in_fold  # the contrastive batches
        # The scene head counts exactly the same pairs.
        assert report["folds"][k]["train_pairs"] == int(((fold != k) & ~keys.isin(in_fold)).sum())
    # Copy-paste swaps are whole components: donor and recipient share a fold.
    images = sorted(frame["image_id"].unique())
    assert all(scorer.fold_of(r) == scorer.fold_of(d) for r, d in zip(images[20:26], images[40:46]))
    # The generic caption (12 images) was too many for one fold: the drop rule paid for it.
    rule = report["fold_rule"]
    assert rule["fold_groups"] == "text" and rule["split_components"] >= 1 and rule["cut_texts"] >= 1
    assert rule["dropped_pairs"] > 0 and rule["dropped_pairs"] == sum(rule["dropped_pairs_per_fold"].values())
    assert GENERIC_KEY not in set().union(*seen.values())  # it sits in every fold, so nobody trains on it
    trained = pq.read_table(f"{cfg.out}/{TEXTS_FILE}").to_pandas().set_index("text")["trained_by"]
    for k in range(3):
        assert not any(trained[key] >> k & 1 for key in set(keys[fold == k]))
        # What the batches used is within what texts.parquet says fold k trained on.
        assert seen[k] <= {key for key, mask in trained.items() if mask >> k & 1}


def test_a_candidate_text_is_scored_by_a_fold_model_that_never_trained_on_it(spied_training, leaky_manifest, tmp_path):
    cfg, _, seen = spied_training
    frame, meta = read_manifest(leaky_manifest)
    scorer = load_indomain(cfg.out, device="cpu")
    keys = text_keys(scorer.tokenizer, frame["caption"].tolist())
    # A caption of an image in fold b, proposed for an image in fold a whose model trained on it
    # (what a retrieval candidate from another fold would be).
    fold = frame["image_id"].map(scorer.fold_of).to_numpy()
    target = frame.iloc[0]
    a = scorer.fold_of(target["image_id"])
    donor = next(i for i in range(len(frame)) if fold[i] != a and keys[i] in seen[a])
    candidate = frame.iloc[donor]["caption"]
    chosen = scorer.fold_for(target["image_id"], candidate)
    assert chosen != a and keys[donor] not in seen[chosen]
    # The pairs of the manifest keep their image's fold.
    assert all(scorer.fold_for(i, c) == scorer.fold_of(i) for i, c in zip(frame["image_id"], frame["caption"]))
    # The engine scores the candidate row with that fold model.
    rows = frame.iloc[[0]].assign(caption=candidate, pair_id=f"{target['image_id']}:99")
    path = tmp_path / "candidates" / "manifest.parquet"
    write_manifest(path, rows[MANIFEST_SCHEMA.names].to_dict("records"), meta)
    result = score_manifest(
        ScoreConfig(manifest=str(path), out=str(tmp_path / "scores"), scorers=[f"indomain:{cfg.out}"], device="cpu"),
        progress=False,
    )
    model = scorer.fold_model(chosen)
    root = dataset_root(leaky_manifest, meta)
    image = model.encode_images(model.preprocess(load_rgb(root / target["image"])).unsqueeze(0))
    expected = float((image * model.encode_texts([candidate])).sum())
    assert result.frame["indomain"].iloc[0] == pytest.approx(expected, abs=1e-4)


def test_retrieval_proposes_captions_of_same_fold_neighbours_only(spied_training, leaky_manifest, tmp_path):
    cfg, _, seen = spied_training
    frame, meta = read_manifest(leaky_manifest)
    root = dataset_root(leaky_manifest, meta)
    scorer = load_indomain(cfg.out, device="cpu")
    captioner = RetrievalCaptioner(scorer, frame.assign(fused=0.5), root, tmp_path / "store", neighbours=50)
    requests = [
        CaptionRequest(r.pair_id, r.image_id, root, r.image, r.scene, r.caption, r.image_sha256)
        for r in frame.groupby("image_id").head(1).itertuples()
    ]
    proposals = captioner.caption(requests, Attempt(round=1, prompt_id="retrieval"))
    proposed = 0
    for request, proposal in zip(requests, proposals):
        if proposal.text is None:
            continue
        proposed += 1
        neighbour = proposal.detail.split()[1].rsplit(":", 1)[0]
        fold = scorer.fold_of(request.image_id)
        assert scorer.fold_of(neighbour) == fold
        # So the request's fold model has trained on neither the image nor the text.
        assert text_keys(scorer.tokenizer, [proposal.text])[0] not in seen[fold]
        assert scorer.fold_for(request.image_id, proposal.text) == fold
    assert proposed > len(requests) // 2
