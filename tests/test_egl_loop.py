"""The EGL–IEL loop on a tiny SynthRS: outputs and lineage, cross-fitted scoring, stop criteria, resume, CLI."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from dldc.cli import main
from dldc.config import CaptionConfig, IndomainConfig, IngestConfig, ScoreConfig
from dldc.data.ingest import ingest
from dldc.data.manifest import MANIFEST_SCHEMA, read_manifest
from dldc.data.synthrs import write_synthrs
from dldc.egl.base import Proposal
from dldc.egl.loop import ReferenceFusion, caption_manifest, signal_columns
from dldc.egl.mask2text import Mask2TextCaptioner
from dldc.iel.engine import score_manifest
from dldc.iel.factory import create_scorer
from dldc.iel.indomain import text_keys, train_indomain

pytestmark = pytest.mark.slow  # every test here uses a trained in-domain scorer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """SynthRS (30 images, 32 px, 40% noise), its manifest, a 2-fold in-domain scorer and round-0 scores."""
    base = tmp_path_factory.mktemp("egl")
    write_synthrs(base / "synthrs", n_images=30, size=32, noise_rate=0.4, seed=3, progress=False)
    manifest = ingest(
        IngestConfig(root=str(base / "synthrs"), out=str(base / "ingest"), workers=1), progress=False
    ).manifest
    train_indomain(
        IndomainConfig(
            manifest=str(manifest), out=str(base / "scorer"), architecture="indomain-test", folds=2, epochs=1,
            batch_size=16, device="cpu",
        ),
        progress=False,
    )  # fmt: skip
    score_cfg = ScoreConfig(
        manifest=str(manifest), out=str(base / "scores"), scorers=[f"indomain:{base / 'scorer'}"], device="cpu"
    )
    scorers = [create_scorer(spec, device="cpu") for spec in score_cfg.scorers]
    scores = score_manifest(score_cfg, scorers=scorers, progress=False)
    return {"base": base, "manifest": str(manifest), "score_cfg": score_cfg, "scorers": scorers, "scores": scores}


def _cfg(world, out, **overrides) -> CaptionConfig:
    settings = {
        "manifest": world["manifest"],
        "scores": str(world["scores"].scores),
        "out": str(out),
        "backends": ["mask2text:synthrs", "retrieval"],
        "rounds": 2,
        "threshold": 0.3,
        "shard_size": 8,
        "device": "cpu",
    }
    return CaptionConfig(**{**settings, **overrides})


def _run(world, cfg, captioners=None):
    return caption_manifest(cfg, world["score_cfg"], scorers=world["scorers"], captioners=captioners, progress=False)


class Counting:
    """Wraps a captioner; counts requests; optionally dies (KeyboardInterrupt) on a given call."""

    def __init__(self, inner, die_on_call=None):
        self.inner, self.die_on_call, self.calls, self.requests = inner, die_on_call, 0, 0
        self.backend, self.model_id = inner.backend, inner.model_id
        self.fingerprint = getattr(inner, "fingerprint", None)

    def caption(self, requests, attempt):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt("killed")
        self.requests += len(requests)
        return self.inner.caption(requests, attempt)


class Silent:
    """A captioner with nothing to say."""

    backend, model_id = "mask2text", "silent"

    def caption(self, requests, attempt):
        return [Proposal(None, "nothing") for _ in requests]


@pytest.fixture(scope="module")
def first_run(world):
    return _run(world, _cfg(world, world["base"] / "captions"))


def test_outputs_keep_the_manifest_contract_and_record_each_captions_source(world, first_run):
    original, _ = read_manifest(world["manifest"])
    output, meta = read_manifest(first_run.manifest)
    assert list(output.columns) == MANIFEST_SCHEMA.names
    assert output["pair_id"].tolist() == original["pair_id"].tolist()
    assert (
        (output[["image", "image_sha256", "scene", "split"]] == original[["image", "image_sha256", "scene", "split"]])
        .all()
        .all()
    )
    replaced = output["caption_source"] != "original"
    assert replaced.any(), "some low pairs got a better caption"
    assert output.loc[replaced, "caption_source"].str.match(r"^egl:(mask2text:synthrs|retrieval:indomain:\w+)$").all()
    assert (output.loc[~replaced, "caption"] == original.loc[~replaced, "caption"]).all()
    assert "caption" in meta.extra
    scores = pd.read_parquet(first_run.scores)
    assert sorted(scores["pair_id"]) == sorted(output["pair_id"]) and "fused" in scores
    # no image ends up with the same caption twice because of the loop
    assert not output[replaced].duplicated(["image_id", "caption"]).any()


def test_captions_parquet_has_every_candidate_with_lineage(world, first_run):
    captions = pd.read_parquet(first_run.captions)
    report = first_run.report
    originals = captions[captions["round"] == 0]
    assert len(originals) == report["pairs"] and (originals["status"] == "original").all()
    candidates = captions[captions["round"] > 0]
    assert len(candidates) == report["candidates"] > 0
    assert set(candidates["backend"]) == {"mask2text", "retrieval"}
    assert set(candidates["prompt_id"]) <= {"layout-v1", "layout-v1-brief"}
    assert set(candidates["status"]) <= {"scored", "none", "empty", "duplicate"}
    scored = candidates[candidates["status"] == "scored"]
    assert scored["indomain"].notna().all() and scored["fused"].notna().all()
    assert (scored["tokens"] <= report["token_budget"]).all()
    # exactly one selected caption per pair, and it is the output manifest's caption
    selected = captions[captions["selected"]].set_index("pair_id")
    assert selected.index.is_unique and len(selected) == report["pairs"]
    output = first_run.frame.set_index("pair_id")
    assert (selected.loc[output.index, "caption"] == output["caption"]).all()
    # a replacement scored higher than the original it replaced (round-0 scale), unless it repaired a
    # caption that the mask contradicts (the layout check's evidence comes first)
    before = originals.set_index("pair_id")
    won = selected[selected["round"] > 0]
    by_score = won[~(before.loc[won.index, "layout"] < 1).to_numpy()]
    assert len(by_score) > 0 and (by_score["fused"] > before.loc[by_score.index, "fused"]).all()
    assert not (won["layout"] < 1).any()
    # without the layout check, mean fused per round never goes down: only ever replaced by a better one
    plain = _run(world, _cfg(world, world["base"] / "captions-plain", layout_check=None))
    means = [r["mean_fused"] for r in plain.report["rounds"]]
    assert means == sorted(means)


def test_candidates_are_scored_by_a_fold_model_that_never_saw_their_image_or_text(world, first_run):
    scorer = world["scorers"][0]
    captions = pd.read_parquet(first_run.captions)
    scored = captions[(captions["round"] > 0) & (captions["status"] == "scored")].head(6)
    manifest, _ = read_manifest(world["manifest"])
    root = world["base"] / "synthrs"
    from dldc.data.images import load_rgb

    for row in scored.itertuples():
        image = manifest.loc[manifest["image_id"] == row.image_id, "image"].iloc[0]
        fold = scorer.fold_for(row.image_id, row.caption)
        # The image's own fold unless that model trained on the text (then one that did not).
        key = text_keys(scorer.tokenizer, [row.caption])[0]
        assert scorer.trained_by.get(key, 0) >> fold & 1 == 0
        model = scorer.fold_model(fold)
        image_embedding = model.encode_images(model.preprocess(load_rgb(root / image)).unsqueeze(0))
        text_embedding = model.encode_texts([row.caption])
        assert float((image_embedding * text_embedding).sum()) == pytest.approx(row.indomain, abs=1e-4)


def test_reference_fusion_matches_the_iels_own_fused_scores(world):
    frame = world["scores"].frame
    columns = signal_columns(frame, ["indomain"])  # the cosine, and the scene fit where the scorer has one
    fused = ReferenceFusion(frame, columns, "rank")(frame)
    assert fused == pytest.approx(frame["fused"].to_numpy(), abs=1e-9)


@pytest.fixture(scope="module")
def mask2text_run(world):
    """An uninterrupted mask2text-only run (shards of 4 pairs), with its captioner's request count."""
    counting = Counting(Mask2TextCaptioner("synthrs"))
    result = _run(
        world, _cfg(world, world["base"] / "captions-m2t", backends=["mask2text:synthrs"], shard_size=4), [counting]
    )
    return result, counting


def test_rerun_with_the_same_inputs_recomputes_nothing(world, mask2text_run):
    first, counting = mask2text_run
    assert counting.requests > 0
    again = Counting(Mask2TextCaptioner("synthrs"))
    second = _run(
        world, _cfg(world, world["base"] / "captions-m2t", backends=["mask2text:synthrs"], shard_size=4), [again]
    )
    assert again.calls == 0, "every generation shard was reused"
    pd.testing.assert_frame_equal(first.frame, second.frame)


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(world, mask2text_run):
    reference, _ = mask2text_run
    cfg = _cfg(world, world["base"] / "captions-killed", backends=["mask2text:synthrs"], shard_size=4)
    dying = Counting(Mask2TextCaptioner("synthrs"), die_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        _run(world, cfg, [dying])
    resumed = Counting(Mask2TextCaptioner("synthrs"))
    result = _run(world, cfg, [resumed])
    pd.testing.assert_frame_equal(result.frame, reference.frame)
    left = pd.read_parquet(result.captions)
    right = pd.read_parquet(reference.captions)
    pd.testing.assert_frame_equal(left, right)
    # the two shards generated before the kill were not generated again
    total = sum(r["targets"] for r in result.report["rounds"][1:])
    assert resumed.requests == total - 2 * 4


def test_loop_stops_when_no_pair_improves_or_none_is_low(world):
    silent = _run(world, _cfg(world, world["base"] / "captions-silent", rounds=5), [Silent()])
    assert silent.report["stop"] == "no pair improved" and len(silent.report["rounds"]) == 2
    assert silent.report["replaced"] == 0
    statuses = pd.read_parquet(silent.captions).query("round == 1")["status"]
    assert (statuses == "none").all() and len(statuses) == silent.report["low_at_start"]
    nothing_low = _run(world, _cfg(world, world["base"] / "captions-none", threshold=0.0, layout_check=None))
    assert nothing_low.report["stop"] == "no pair below its scene threshold"
    assert nothing_low.report["candidates"] == 0 and nothing_low.report["replaced"] == 0
    one = _run(world, _cfg(world, world["base"] / "captions-one", rounds=1))
    assert one.report["stop"] == "ran all 1 rounds" and len(one.report["rounds"]) == 2


def test_layout_check_makes_contradicted_captions_targets_and_repairs_them(world):
    # threshold 0: no pair is low by its score, so the targets are exactly the captions the masks contradict
    result = _run(world, _cfg(world, world["base"] / "captions-layout", threshold=0.0, rounds=2,
                              backends=["mask2text:synthrs"]))
    check = result.report["layout_check"]
    assert check["table"] == "synthrs" and check["images_without_mask"] == 0
    assert check["checked_at_start"] > 0 and check["contradicted_at_start"] > 0
    assert result.report["low_at_start"] == check["contradicted_at_start"]
    assert check["contradicted_at_end"] < check["contradicted_at_start"]
    captions = pd.read_parquet(result.captions)
    round0 = captions[captions["round"] == 0].set_index("pair_id")
    targets = set(captions.loc[captions["round"] == 1, "pair_id"])
    assert targets == set(round0.index[round0["layout"] < 1])
    accepted = captions[captions["accepted"] & (captions["round"] > 0)]
    assert len(accepted) > 0 and not (accepted["layout"] < 1).any()  # no contradicted caption got in
    off = _run(world, _cfg(world, world["base"] / "captions-layout-off", threshold=0.0, layout_check=None))
    assert off.report["layout_check"] is None and "layout" not in pd.read_parquet(off.captions)


def test_cli_caption_runs_the_stage(world, tmp_path):
    out = tmp_path / "cli-captions"
    result = CliRunner().invoke(
        main,
        [
            "--no-progress", "-S", "tracking.enabled=false",
            "-S", f"score.scorers=[indomain:{world['base'] / 'scorer'}]",
            "-S", f"score.out={world['base'] / 'scores'}", "-S", "caption.device=cpu", "caption",
            "--manifest", world["manifest"], "--scores", str(world["scores"].scores), "--out", str(out),
            "--backend", "mask2text", "--rounds", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "captions replaced" in result.output and (out / "manifest.parquet").is_file()
    bad = CliRunner().invoke(
        main, ["-S", "tracking.enabled=false", "caption", "--manifest", str(tmp_path / "no.parquet")]
    )
    assert bad.exit_code != 0 and "not found" in bad.output
