"""EGL captioners: prompts and output cleaning, mask2text on hand-made masks, a tiny Qwen2.5-VL end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dldc.config import CaptionConfig, ConfigError, load_config
from dldc.data.class_tables import load_class_table
from dldc.data.mask_text import describe_mask, label_regions, render_description
from dldc.data.vocabulary import scene_words
from dldc.egl.base import Attempt, Captioner, CaptionRequest
from dldc.egl.factory import CaptionerContext, create_captioner, parse_captioner_spec
from dldc.egl.mask2text import Mask2TextCaptioner, mask_path_for
from dldc.egl.prompts import clean_output, clip_token_counter, fit_to_budget, render_prompt
from dldc.iel.factory import WeightsNotFoundError

sys.path.insert(0, str(Path(__file__).parent))
import egl_fixtures as fx  # noqa: E402

SYNTH = load_class_table("synthrs")
WATER, TREE, BUILDING, ROAD = 1, 2, 5, 6
DUBAI_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai-seg"


# --------------------------------------------------------------------------- prompts and cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<|im_start|>assistant\nA lake at the top left.<|im_end|>", "A lake at the top left."),
        ("ASSISTANT: Sure! Here is a new caption: A river. A river. A river.", "A river."),
        ('**Caption:** "Two runways cross in the center."', "Two runways cross in the center."),
        ("- Trees on the left.\n- Water on the right.", "Trees on the left. Water on the right."),
        ("Roads roads roads roads meet.\nUSER: and now?", "Roads meet."),
        ("<|im_end|>", ""),
    ],
)
def test_clean_output_removes_chat_artefacts_and_repeats(raw, expected):
    assert clean_output(raw) == expected


def test_fit_to_budget_cuts_at_a_sentence_boundary_with_the_clip_tokenizer():
    count = clip_token_counter()
    sentence = "a wide river runs from the top left to the bottom right between green fields and trees."
    text = " ".join([sentence] * 6)
    fitted, cut = fit_to_budget(text, count, 77)
    assert cut and count(fitted) <= 77 and fitted.endswith(".")
    assert fitted == " ".join([sentence] * (len(fitted.split(". ")))), "whole sentences only"
    assert fit_to_budget(sentence, count, 77) == (sentence, False)
    one_long = "trees " * 100
    fitted, cut = fit_to_budget(one_long.strip(), count, 20)
    assert cut and count(fitted) <= 20


def test_prompts_render_scene_and_caption_and_config_checks_them():
    assert scene_words("DenseResidential") == "dense residential"
    text = render_prompt("A {scene} image; old caption: {caption}", "storage_tanks", " tanks ")
    assert text == "A storage tanks image; old caption: tanks"
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(None, ['caption.prompts={"v9": "Describe {place}"}'])
    paper = load_config(None, ["profile=paper"])
    assert paper.caption.backends == ["hf:Qwen/Qwen2.5-VL-7B-Instruct"]


def test_captioner_specs_parse_or_explain():
    assert parse_captioner_spec("hf:./models/qwen").target == "./models/qwen"
    assert parse_captioner_spec("retrieval:data/scorer") == ("retrieval", "data/scorer", None)
    with pytest.raises(ValueError, match="must be one of"):
        parse_captioner_spec("gpt4:latest")
    with pytest.raises(ValueError, match="names no model"):
        parse_captioner_spec("hf:")


# --------------------------------------------------------------------------- mask2text


def test_mask2text_places_a_pond_surrounded_by_trees():
    mask = np.full((30, 30), TREE)
    mask[2:9, 2:9] = WATER
    facts = describe_mask(mask, SYNTH, scene="lake")
    water = facts.by_name("water")
    assert water.largest_cell == "top left" and water.components == 1
    assert water.surrounded_by == "tree" and water.crossing is None
    assert water.share == pytest.approx(49 / 900, abs=1e-4)
    assert facts.classes[0].name == "tree"  # sorted by share
    assert render_description(facts, "brief") == "a lake scene with water at the top left, surrounded by trees."
    full = render_description(facts, "full")
    assert "land cover: trees 95% and water 5%." in full


def test_mask2text_finds_a_road_crossing_and_counts_buildings():
    mask = np.full((30, 30), TREE)
    mask[:, 14:16] = ROAD  # top to bottom
    for top, left in ((2, 2), (20, 3), (22, 22)):
        mask[top : top + 3, left : left + 3] = BUILDING
    facts = describe_mask(mask, SYNTH, scene="residential")
    road, buildings = facts.by_name("road"), facts.by_name("building")
    assert road.crossing == ("top", "bottom")
    assert buildings.components == 3
    text = render_description(facts, "full")
    assert "roads running from the top to the bottom" in text
    assert "three buildings" in text


def test_label_regions_separates_classes_and_joins_diagonals():
    mask = np.array([[1, 0, 1], [0, 1, 0], [2, 2, -1]])
    labels, value_of = label_regions(mask)
    # the 1s touch diagonally (one region); the two 0s only touch diagonally too; the 2s are one run
    assert sorted(value_of[1:].tolist()) == [0, 1, 2]
    assert labels[2, 2] == 0


def test_rgb_class_table_reads_dubai_colours_and_refuses_unknown_ones():
    table = load_class_table("dubai-seg")
    colours = {c.name: c.color for c in table.classes}
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:] = colours["land"]
    rgb[:, :5] = colours["water"]
    rgb[0, 0] = (0, 0, 0)  # unannotated: ignored
    decoded = table.decode(Image.fromarray(rgb))
    names = [c.name for c in table.classes]
    assert decoded[0, 0] == -1 and decoded[5, 2] == names.index("water")
    facts = describe_mask(decoded, table)
    assert facts.by_name("water").main_cell in ("left", "top left", "bottom left")
    rgb[:10] = (255, 0, 0)
    with pytest.raises(ValueError, match="#FF0000"):
        table.decode(Image.fromarray(rgb))


def test_mask2text_gives_the_pairs_of_one_image_distinct_variants(tmp_path):
    (tmp_path / "masks").mkdir()
    mask = np.full((30, 30), TREE, np.uint8)
    mask[2:9, 2:9] = WATER
    mask[20:24, 20:24] = BUILDING
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    requests = [CaptionRequest(f"a:{k}", "a", tmp_path, "images/a.png", "lake", "") for k in range(3)]
    texts = [p.text for p in Mask2TextCaptioner("synthrs").caption(requests, Attempt(1, "layout-v1-brief"))]
    assert texts[0] == render_description(describe_mask(mask.astype(int), SYNTH, "lake"), "brief")
    assert len(set(texts)) == 3
    tried = CaptionRequest("a:0", "a", tmp_path, "images/a.png", "lake", "", avoid=tuple(t.lower() for t in texts))
    again = Mask2TextCaptioner("synthrs").caption([tried], Attempt(2, "layout-v1-brief"))[0].text
    assert again not in texts


def test_mask_paths_follow_the_image_paths():
    assert mask_path_for("images/lake_0001.png") == "masks/lake_0001.png"
    assert mask_path_for("tile_3/images/image_part_002.jpg") == "tile_3/masks/image_part_002.png"


def test_mask2text_captioner_on_real_dubai_masks_or_reports_missing_ones(tmp_path):
    captioner = Mask2TextCaptioner("dubai-seg")
    assert isinstance(captioner, Captioner)
    missing = CaptionRequest("p:0", "p", tmp_path, "images/none.jpg", "unknown", "")
    proposals = captioner.caption([missing], Attempt(1, "layout-v1"))
    assert proposals[0].text is None and "no mask" in proposals[0].detail
    if not DUBAI_SHARED.is_dir():
        pytest.skip("dubai-seg not found in ../shared/data")
    request = CaptionRequest("d:0", "d", DUBAI_SHARED, "tile_1/images/image_part_001.jpg", "unknown", "")
    full, brief = (captioner.caption([request], Attempt(1, p))[0].text for p in ("layout-v1", "layout-v1-brief"))
    assert full.startswith("an aerial image with") and "land cover: unpaved land" in full
    assert len(brief) < len(full)


# --------------------------------------------------------------------------- Hugging Face VLMs


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    return fx.save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


def _requests(tmp_path: Path, count: int = 3) -> list[CaptionRequest]:
    (tmp_path / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    requests = []
    for index in range(count):
        name = f"images/{index}.png"
        size = (56 + 8 * index, 48)  # different sizes: different numbers of image tokens, padded batch
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / name)
        requests.append(CaptionRequest(f"i{index}:0", f"i{index}", tmp_path, name, "Airport", "planes near a runway"))
    return requests


@pytest.mark.slow
def test_tiny_qwen2_5_vl_loads_like_a_hub_model_and_generates(tiny_qwen, tmp_path, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(source, **kwargs):
        seen.append(kwargs)
        return original(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    cfg = CaptionConfig(max_new_tokens=6, batch_size=2, device="cpu")
    context = CaptionerContext(tmp_path, None, [], tmp_path)
    captioner = create_captioner(f"hf:{tiny_qwen}", cfg, context)
    assert isinstance(captioner, Captioner) and captioner.backend == "hf"
    assert type(captioner.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert seen and seen[0]["trust_remote_code"] is False  # only when the config says so

    requests = _requests(tmp_path)
    prompt = captioner.prompt_text(requests[0], "layout-v1")
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt and "airport scene" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    greedy = captioner.caption(requests, Attempt(1, "layout-v1"))
    assert len(greedy) == 3 and all(isinstance(p.text, str) for p in greedy)
    assert [p.text for p in captioner.caption(requests, Attempt(1, "layout-v1"))] == [p.text for p in greedy]
    sampled = [p.text for p in captioner.caption(requests, Attempt(2, "layout-v1-brief", temperature=1.0, seed=5))]
    again = [p.text for p in captioner.caption(requests, Attempt(2, "layout-v1-brief", temperature=1.0, seed=5))]
    assert sampled == again  # seeded sampling: a rerun proposes the same candidates


def test_hub_ids_that_are_not_available_offline_explain_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match="hf download"):
        create_captioner(
            "hf:Qwen/Qwen2.5-VL-7B-Instruct",
            CaptionConfig(device="cpu"),
            CaptionerContext(tmp_path, None, [], tmp_path),
        )
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    with pytest.raises(ValueError, match="not a loadable"):
        create_captioner(f"hf:{broken}", CaptionConfig(device="cpu"), CaptionerContext(tmp_path, None, [], tmp_path))
