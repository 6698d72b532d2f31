"""Layout check: claims parsed from captions, cell cover of masks, agreement with known answers, the loop's rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dldc.data.class_tables import load_class_table
from dldc.data.images import PathEscapeError
from dldc.egl.layout_check import LayoutChecker, agreement, caption_claims, cell_cover, object_vocabulary
from dldc.egl.loop import LAYOUT, decide_replacements, is_low

TABLE = load_class_table("synthrs")
VOCAB = object_vocabulary(TABLE)
WATER, TREE, GRASS, BUILDING, ROAD, BARE = (
    next(i for i, c in enumerate(TABLE.classes) if c.name == n)
    for n in ("water", "tree", "grass", "building", "road", "bare_soil")
)


def lake_mask() -> np.ndarray:
    """30×30: trees everywhere, a lake filling the top-left cell, a building block in the bottom-right cell."""
    mask = np.full((30, 30), TREE)
    mask[:10, :10] = WATER
    mask[22:28, 22:28] = BUILDING
    return mask


def test_vocabulary_reads_words_singular_and_aliases_of_the_table() -> None:
    assert VOCAB["water"] == VOCAB["lake"] == VOCAB["sea"] == frozenset({WATER})
    assert VOCAB["houses"] == VOCAB["building"] == frozenset({BUILDING})
    assert VOCAB["road"] == frozenset({ROAD, BARE})  # unpaved roads are bare soil in SynthRS
    assert "unlabeled" not in VOCAB


def test_claims_pair_each_place_with_its_object() -> None:
    text = "A beach with the sea on the left and trees at the top right. No trees in the center."
    claims = caption_claims(text, VOCAB)
    assert [(c.word, c.cells) for c in claims] == [
        ("sea", ("top left", "left", "bottom left")),  # a bare side names its three cells
        ("trees", ("top right",)),
    ]  # "no trees" claims nothing; sentences are separate
    route = caption_claims("a road bridge crosses a river that flows from the right to the top left", VOCAB)
    assert route[0].word == "road/river" and route[0].classes == frozenset({ROAD, BARE, WATER})
    assert [c.cells for c in route] == [("top right", "right", "bottom right"), ("top left",)]
    assert caption_claims("an aerial image of a forest", VOCAB) == []
    assert caption_claims("houses in the upper left corner", VOCAB)[0].cells == ("top left",)
    assert caption_claims("the left bank", VOCAB) == []  # no preposition: not a place


def test_cell_cover_known_answer_and_ignored_pixels() -> None:
    mask = lake_mask()
    cover = cell_cover(mask, len(TABLE.classes))
    assert cover.shape == (len(TABLE.classes), 9)
    assert cover[WATER, 0] == 1.0 and cover[WATER, 1:].sum() == 0.0
    assert cover[BUILDING, 8] == pytest.approx(36 / 100) and cover[TREE, 8] == pytest.approx(64 / 100)
    mask[10:20, 10:20] = -1  # the centre cell unlabelled: no shares there
    assert cell_cover(mask, len(TABLE.classes))[:, 4].sum() == 0.0
    assert np.allclose(cover.sum(axis=0), 1.0)


def test_agreement_is_the_share_of_claims_the_mask_confirms() -> None:
    cover = cell_cover(lake_mask(), len(TABLE.classes))
    assert agreement("a lake at the top left surrounded by trees", cover, VOCAB) == 1.0
    assert agreement("a lake at the bottom right", cover, VOCAB) == 0.0
    assert agreement("a lake at the top left and buildings at the top", cover, VOCAB) == 0.5
    assert agreement("buildings at the bottom right", cover, VOCAB) == 1.0
    assert agreement("buildings at the bottom right", cover, VOCAB, min_share=0.5) == 0.0  # 36% < 50%
    assert math.isnan(agreement("a lake in a forest", cover, VOCAB))
    unlabelled = lake_mask()
    unlabelled[:10, :10] = -1
    assert math.isnan(agreement("a lake at the top left", cell_cover(unlabelled, 10), VOCAB))  # unverifiable


def test_checker_reads_masks_once_records_missing_ones_and_refuses_escapes(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(lake_mask().astype(np.uint8), mode="L").save(tmp_path / "masks" / "a.png")
    checker = LayoutChecker("synthrs", tmp_path)
    values = checker(["images/a.png", "images/a.png", "images/b.png", "images/a.png"],
                     ["a lake at the top left", "a lake at the bottom", "a lake at the top left", None])
    assert values[:2].tolist() == [1.0, 0.0] and math.isnan(values[2]) and math.isnan(values[3])
    assert list(checker.problems) == ["images/b.png"] and "FileNotFoundError" in checker.problems["images/b.png"]
    with pytest.raises(PathEscapeError):
        checker(["../outside/images/x.png"], ["a lake at the top left"])


def _state(**layout: float) -> pd.DataFrame:
    names = list(layout)
    return pd.DataFrame({
        "pair_id": names, "image_id": [f"img-{n}" for n in names], "scene": "lake",
        "caption": [f"caption of {n}" for n in names], "fused": 0.9, LAYOUT: list(layout.values()),
        "candidate_id": [f"{n}@r0" for n in names], "backend": "original", "model": "", "round": 0,
        "source": "original",
    })  # fmt: skip


def _candidates(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({
        "candidate_id": [f"{p}@r1.{k}" for k, (p, _, _) in enumerate(rows)], "pair_id": [p for p, _, _ in rows],
        "image_id": [f"img-{p}" for p, _, _ in rows], "scene": "lake", "round": 1, "backend": "mask2text",
        "model": "synthrs", "caption": [f"new {k}" for k in range(len(rows))], "status": "scored", "detail": "",
        "fused": [f for _, f, _ in rows], LAYOUT: [a for _, _, a in rows],
    })  # fmt: skip


def test_loop_rule_a_contradicted_caption_is_low_and_agreeing_with_the_mask_comes_first() -> None:
    state = _state(good=1.0, wrong=0.0, silent=math.nan)
    assert is_low(state, {"lake": 0.5}).tolist() == [False, True, False]  # fused 0.9 > 0.5, but "wrong" is low
    rows = _candidates([
        ("good", 0.99, 0.0),    # scores higher but the mask contradicts it: never replaces an agreeing caption
        ("wrong", 0.40, 1.0),   # scores lower, agrees with the mask: replaces the contradicted caption
        ("silent", 0.95, 1.0),  # no layout either way before: the usual score rule
    ])  # fmt: skip
    updated, decided, improved = decide_replacements(state, rows, min_gain=0.0)
    assert improved == 2 and decided["accepted"].tolist() == [False, True, True]
    assert updated.set_index("pair_id")[LAYOUT].to_dict() == {"good": 1.0, "wrong": 1.0, "silent": 1.0}
    # 0.95 - 0.9 < 0.1; the mask's evidence needs no gain
    _, decided, _ = decide_replacements(state, rows, min_gain=0.1)
    assert decided["accepted"].tolist() == [False, True, False]
