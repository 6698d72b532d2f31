"""The caption–scene naive Bayes: known answers, save/load, bad inputs, fusion as a signal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dldc.iel.fuse import fuse_scores
from dldc.iel.scene_text import SceneCaptionModel, content_tokens


def test_posterior_matches_a_hand_computation():
    model = SceneCaptionModel.fit([[5, 6], [5, 7], [8, 9]], ["farm", "farm", "port"], vocab_size=10, alpha=1.0)
    # farm: 4 tokens (5 twice), port: 2; denominators 4 + 10 and 2 + 10; priors 2/3 and 1/3.
    farm = 2 / 3 * (3 / 14) * (2 / 14)
    port = 1 / 3 * (1 / 12) * (1 / 12)
    assert model.probability([[5, 6]], ["farm"])[0] == pytest.approx(farm / (farm + port))
    # A token never seen in training (3) weighs 1/14 under farm and 1/12 under port.
    farm_unseen, port_unseen = 2 / 3 / 14, 1 / 3 / 12
    assert model.probability([[3]], ["port"])[0] == pytest.approx(port_unseen / (farm_unseen + port_unseen))
    posterior = np.exp(model.log_posterior([[5], [9, 9], []]))
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0)
    np.testing.assert_allclose(posterior[2], [2 / 3, 1 / 3])  # no tokens: the prior
    assert math.isnan(model.probability([[5]], ["desert"])[0])


def test_save_and_load_round_trip(tmp_path):
    model = SceneCaptionModel.fit([[1, 2, 2], [3], [2, 4]], ["a", "b", "c"], vocab_size=8, alpha=0.5)
    model.save(tmp_path / "m.safetensors")
    loaded = SceneCaptionModel.load(tmp_path / "m.safetensors")
    assert loaded.scenes == ["a", "b", "c"]
    captions = [[1, 2], [3, 3], [7]]
    np.testing.assert_array_equal(loaded.log_posterior(captions), model.log_posterior(captions))
    model.save(tmp_path / "again.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "again.safetensors").read_bytes()


def test_bad_inputs():
    with pytest.raises(ValueError, match="one per caption"):
        SceneCaptionModel.fit([[1]], ["a", "b"], vocab_size=4)
    with pytest.raises(ValueError, match="at least two scenes"):
        SceneCaptionModel.fit([[1], [2]], ["a", "a"], vocab_size=4)
    with pytest.raises(ValueError, match="no captions"):
        SceneCaptionModel.fit([], [], vocab_size=4)
    with pytest.raises(ValueError, match="alpha"):
        SceneCaptionModel.fit([[1], [2]], ["a", "b"], vocab_size=4, alpha=0)
    model = SceneCaptionModel.fit([[1], [2]], ["a", "b"], vocab_size=4)
    with pytest.raises(ValueError, match="one scene per caption"):
        model.probability([[1]], ["a", "b"])


def test_content_tokens_strips_specials_and_padding():
    rows = np.array([[49406, 10, 11, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])
    out = content_tokens(rows, 49406, 49407)
    assert out[0].tolist() == [10, 11] and out[1].tolist() == []


def test_signals_are_fused_without_clipscore_and_nan_is_skipped():
    frame = pd.DataFrame(
        {
            "scene": ["a"] * 4,
            "cos": [0.1, 0.2, 0.3, 0.4],
            "fit": [0.9, 0.8, 0.7, np.nan],
        }
    )
    out = fuse_scores(frame, ["cos"], signals=["fit"])
    assert "cos_clipscore" in out and "fit_clipscore" not in out
    assert out["fit_scene_pct"].iloc[:3].round(3).tolist() == [0.833, 0.5, 0.167]
    # The NaN signal is left out of the last pair's mean: its fused score is its cosine's rank.
    assert out["fused"].iloc[3] == pytest.approx(out["cos_scene_pct"].iloc[3])
    with pytest.raises(ValueError, match="lacks columns"):
        fuse_scores(frame, ["cos"], signals=["missing"])
