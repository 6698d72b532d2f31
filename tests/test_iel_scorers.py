"""IEL scorers (open_clip, Hugging Face) and the spec factory, on tiny offline models.

The tiny models are built from configs, saved in the formats real checkpoints come in
(RemoteCLIP ``torch.save(state_dict)``, DDP-wrapped, safetensors, ``save_pretrained``) and
loaded back through ``create_scorer``, i.e. the same code path as the real models.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dldc.device import autocast, resolve_device, resolve_precision
from dldc.iel.base import Scorer, file_digest
from dldc.iel.factory import SPEC_FORMS, ScorerSpec, WeightsNotFoundError, create_scorer, parse_spec

# --import-mode=importlib does not put tests/ on sys.path; the shared tiny-model helpers live there.
sys.path.insert(0, str(Path(__file__).parent))
import iel_fixtures as fx  # noqa: E402

ATOL = 1e-5


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="module")
def oc(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A tiny open_clip config, its source model, and checkpoints of it in several formats."""
    root = tmp_path_factory.mktemp("open_clip")
    config = fx.write_open_clip_config(root)
    source = fx.build_open_clip_model(config, seed=1)
    state = source.state_dict()
    files = types.SimpleNamespace(root=root, config=config, source=source)
    files.plain = root / "RemoteCLIP-tiny.pt"
    torch.save(state, files.plain)
    files.ddp = root / "RemoteCLIP-tiny-ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, files.ddp)
    files.safetensors = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(files.safetensors))
    files.other = root / "other.pt"
    torch.save(fx.build_open_clip_model(config, seed=2).state_dict(), files.other)
    return files


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.save_hf_clip(tmp_path_factory.mktemp("hf") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def hf_clip(hf_clip_dir: Path) -> Scorer:
    return create_scorer(f"hf:{hf_clip_dir}", device="cpu")


def _pixels(scorer: Scorer) -> torch.Tensor:
    return torch.stack([scorer.preprocess(image) for image in fx.sample_images()])


def _assert_unit_rows(embeddings: torch.Tensor, rows: int, dim: int) -> None:
    assert embeddings.shape == (rows, dim)
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(rows))


# --- open_clip -------------------------------------------------------------------------------


def test_random_open_clip_from_json_config_is_seeded(oc: types.SimpleNamespace) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    scorer = create_scorer(f"open_clip:{oc.config}", device="cpu")
    assert torch.equal(torch.rand(1), expected_next), "loading must not disturb the global RNG"

    assert isinstance(scorer, Scorer)
    assert scorer.scorer_id == f"open_clip:tiny-clip@cfg-{_sha(oc.config)}:random"
    assert scorer.name == "tiny_clip_random"
    assert scorer.context_length == 77 and scorer.device == torch.device("cpu") and scorer.precision == "fp32"
    images = scorer.encode_images(_pixels(scorer))
    _assert_unit_rows(images, 3, 32)
    _assert_unit_rows(scorer.encode_texts(fx.CAPTIONS), 3, 32)
    assert scorer.encode_texts([]).shape == (0, 32)

    again = create_scorer(f"open_clip:{oc.config}", device="cpu")
    assert again.scorer_id == scorer.scorer_id
    torch.testing.assert_close(again.encode_images(_pixels(again)), images)


@pytest.mark.parametrize(
    ("attr", "name"),
    [("plain", "remoteclip_tiny"), ("ddp", "remoteclip_tiny_ddp"), ("safetensors", "tiny_clip_tiny")],
)
def test_checkpoint_loads_the_source_weights(oc: types.SimpleNamespace, attr: str, name: str) -> None:
    import open_clip

    path = getattr(oc, attr)
    scorer = create_scorer(f"open_clip:{oc.config}:{path}", device="cpu")
    assert scorer.scorer_id == f"open_clip:tiny-clip@cfg-{_sha(oc.config)}:sha256-{file_digest(str(path))}"
    assert scorer.name == name

    # Preprocessing is open_clip's own eval transform for the model.
    _, _, reference_transform = open_clip.create_model_and_transforms("tiny-clip")
    pixels = _pixels(scorer)
    torch.testing.assert_close(pixels, torch.stack([reference_transform(im) for im in fx.sample_images()]))

    tokens = open_clip.get_tokenizer("tiny-clip")(fx.CAPTIONS)
    with torch.no_grad():
        expected_images = F.normalize(oc.source.encode_image(pixels), dim=-1)
        expected_texts = F.normalize(oc.source.encode_text(tokens), dim=-1)
    torch.testing.assert_close(scorer.encode_images(pixels), expected_images, atol=ATOL, rtol=0)
    torch.testing.assert_close(scorer.encode_texts(fx.CAPTIONS), expected_texts, atol=ATOL, rtol=0)


def test_scorer_id_follows_the_weights(oc: types.SimpleNamespace, tmp_path: Path) -> None:
    first = create_scorer(f"open_clip:{oc.config}:{oc.plain}", device="cpu")
    again = create_scorer(f"open_clip:{oc.config}:{oc.plain}", device="cpu")
    copy = shutil.copy(oc.plain, tmp_path / "renamed.pt")
    moved = create_scorer(f"open_clip:{oc.config}:{copy}", device="cpu")
    other = create_scorer(f"open_clip:{oc.config}:{oc.other}", device="cpu")

    assert first.scorer_id == again.scorer_id == moved.scorer_id  # content-addressed, not path-addressed
    assert other.scorer_id != first.scorer_id
    pixels = _pixels(first)
    assert not torch.allclose(other.encode_images(pixels), first.encode_images(pixels))


def test_pickled_objects_in_a_checkpoint_are_refused(oc: types.SimpleNamespace, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):  # an unsafe torch.load would run this: it creates the marker file
            return (open, (str(marker), "w"))

    evil = tmp_path / "RemoteCLIP-evil.pt"
    torch.save({"state_dict": oc.source.state_dict(), "payload": Payload()}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        create_scorer(f"open_clip:{oc.config}:{evil}", device="cpu")
    assert not marker.exists()


def test_mismatched_checkpoint_lists_the_keys(oc: types.SimpleNamespace, tmp_path: Path) -> None:
    state = dict(oc.source.state_dict())
    del state["logit_scale"]
    state["visual.extra_head.weight"] = torch.zeros(2)
    state["text_projection"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError) as caught:
        create_scorer(f"open_clip:{oc.config}:{bad}", device="cpu")
    message = str(caught.value)
    assert "1 missing keys [logit_scale]" in message
    assert "1 unexpected keys [visual.extra_head.weight]" in message
    assert "text_projection (3, 3) vs (64, 32)" in message


def test_open_clip_token_counts_are_untruncated(oc: types.SimpleNamespace) -> None:
    scorer = create_scorer(f"open_clip:{oc.config}", device="cpu")
    assert len(fx.LONG_CAPTION.split()) == 120
    short, long = scorer.token_counts(["two planes", fx.LONG_CAPTION])
    assert short == 4  # start + 2 words + end
    assert long == 122 > scorer.context_length
    _assert_unit_rows(scorer.encode_texts([fx.LONG_CAPTION]), 1, 32)


def test_token_counts_read_off_encoded_ids_equal_a_fresh_count(oc: types.SimpleNamespace) -> None:
    # encode_texts remembers the counts its own ids show; token_counts must give exactly what a
    # separate tokenisation gives, including rows at the context boundary and "!" (token id 0).
    from dldc.iel.open_clip_scorer import count_tokens

    scorer = create_scorer(f"open_clip:{oc.config}", device="cpu")
    context = scorer.context_length
    exact_fit = " ".join(["lake"] * (context - 2))  # start + 75 words + end: the last slot holds the end
    one_short = " ".join(["lake"] * (context - 3))
    texts = ["two planes", "wow! a lake!", fx.LONG_CAPTION, exact_fit, one_short, ""]
    expected = [count_tokens(scorer.tokenizer, text) for text in texts]
    assert expected[3] == context and expected[4] == context - 1 and expected[2] > context
    scorer.encode_texts(texts)
    assert scorer._token_counts._counts == {"two planes": 4, "wow! a lake!": expected[1], one_short: context - 1, "": 2}
    assert scorer.token_counts(texts) == expected
    assert scorer._token_counts._counts == {}  # handed out once
    assert scorer.token_counts(texts) == expected  # and counted afresh after that


def test_json_configs_sharing_a_stem_do_not_mix(oc: types.SimpleNamespace, tmp_path: Path) -> None:
    narrow = fx.write_open_clip_config(tmp_path, embed_dim=16)  # also named tiny-clip.json
    assert create_scorer(f"open_clip:{narrow}", device="cpu").encode_texts(["x"]).shape == (1, 16)
    assert create_scorer(f"open_clip:{oc.config}", device="cpu").encode_texts(["x"]).shape == (1, 32)


def test_json_config_may_not_shadow_a_builtin(tmp_path: Path) -> None:
    config = fx.write_open_clip_config(tmp_path, name="ViT-B-32")
    with pytest.raises(ValueError, match="shadow"):
        create_scorer(f"open_clip:{config}", device="cpu")


# --- Hugging Face ----------------------------------------------------------------------------


def test_hf_clip_matches_the_source_model(hf_clip: Scorer, hf_clip_dir: Path) -> None:
    from transformers import AutoProcessor, CLIPModel

    scorer = hf_clip
    assert isinstance(scorer, Scorer)
    assert scorer.scorer_id.startswith("hf:tiny-clip:") and len(scorer.scorer_id.rsplit(":", 1)[1]) == 12
    assert scorer.name == "tiny_clip" and scorer.context_length == 77

    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    processor = AutoProcessor.from_pretrained(hf_clip_dir)
    inputs = processor(text=fx.CAPTIONS, images=fx.sample_images(), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_images = F.normalize(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)
        expected_texts = F.normalize(
            model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).pooler_output
        )
    pixels = _pixels(scorer)
    torch.testing.assert_close(pixels, inputs["pixel_values"])
    torch.testing.assert_close(scorer.encode_images(pixels), expected_images, atol=ATOL, rtol=0)
    torch.testing.assert_close(scorer.encode_texts(fx.CAPTIONS), expected_texts, atol=ATOL, rtol=0)


def test_hf_scorer_id_follows_the_weights(hf_clip: Scorer, hf_clip_dir: Path, tmp_path: Path) -> None:
    first = hf_clip
    again = create_scorer(f"hf:{hf_clip_dir}", device="cpu")
    other = create_scorer(f"hf:{fx.save_hf_clip(tmp_path / 'tiny-clip', seed=1)}", device="cpu")
    assert first.scorer_id == again.scorer_id
    assert other.scorer_id != first.scorer_id  # same directory name, other weights


def test_hf_token_counts_are_untruncated(hf_clip: Scorer, oc: types.SimpleNamespace) -> None:
    scorer = hf_clip
    texts = [*fx.CAPTIONS, fx.LONG_CAPTION]
    counts = scorer.token_counts(texts)
    assert counts[-1] == 122 > scorer.context_length
    # The tokenizer was rebuilt from open_clip's BPE: both backends must count alike.
    assert counts == create_scorer(f"open_clip:{oc.config}", device="cpu").token_counts(texts)
    _assert_unit_rows(scorer.encode_texts([fx.LONG_CAPTION]), 1, 32)


def test_hf_siglip_pads_to_max_length(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, SiglipModel

    directory = fx.save_hf_siglip(tmp_path / "tiny-siglip")
    scorer = create_scorer(f"hf:{directory}", device="cpu")
    assert scorer.context_length == 64 and scorer.text_padding == "max_length"

    model = SiglipModel.from_pretrained(directory).eval()
    tokens = AutoTokenizer.from_pretrained(directory)(
        fx.CAPTIONS, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )
    pixels = _pixels(scorer)
    with torch.no_grad():
        expected_texts = F.normalize(model.get_text_features(**tokens).pooler_output)
        expected_images = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(scorer.encode_texts(fx.CAPTIONS), expected_texts, atol=ATOL, rtol=0)
    torch.testing.assert_close(scorer.encode_images(pixels), expected_images, atol=ATOL, rtol=0)


# --- both backends ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["open_clip", "hf"])
def test_preprocess_pickles_without_the_model(
    backend: str, oc: types.SimpleNamespace, hf_clip: Scorer, tmp_path: Path
) -> None:
    from dldc.data.images import load_rgb
    from dldc.iel.image_batches import ImageBatches, batch_preprocess

    scorer = create_scorer(f"open_clip:{oc.config}:{oc.plain}", device="cpu") if backend == "open_clip" else hf_clip
    blob = pickle.dumps(scorer.preprocess)
    assert len(blob) < 100_000  # the transform alone, not the weights
    image = fx.sample_images(1)[0]
    torch.testing.assert_close(pickle.loads(blob)(image), scorer.preprocess(image))
    rgba = image.convert("RGBA")  # odd modes are converted, not rejected
    assert scorer.preprocess(rgba).shape == (3, 32, 32)
    # The engine's route: batched here, and in a decoding worker (which receives it pickled).
    paths = []
    for index, sample in enumerate(fx.sample_images(3)):
        sample.save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    batched = batch_preprocess(scorer.preprocess)
    here = next(ImageBatches(0)(batched, paths, 3))
    assert torch.equal(here, torch.stack([scorer.preprocess(load_rgb(p)) for p in paths]))
    with ImageBatches(1) as batches:
        assert torch.equal(next(batches(batched, paths, 3)), here)


# --- factory ---------------------------------------------------------------------------------


def test_parse_spec_forms() -> None:
    assert parse_spec("open_clip:ViT-L-14:/m/RemoteCLIP-ViT-L-14.pt") == ScorerSpec(
        "open_clip", "ViT-L-14", "/m/RemoteCLIP-ViT-L-14.pt"
    )
    assert parse_spec("open_clip:ViT-B-32:openai") == ScorerSpec("open_clip", "ViT-B-32", "openai")
    assert parse_spec("open_clip:/cfg/tiny.json") == ScorerSpec("open_clip", "/cfg/tiny.json", None)
    assert parse_spec("hf:google/siglip-base-patch16-224@main") == ScorerSpec(
        "hf", "google/siglip-base-patch16-224", "main"
    )
    assert parse_spec("hf:/models/clip@v2") == ScorerSpec("hf", "/models/clip@v2", None)
    assert parse_spec("indomain:models/indomain") == ScorerSpec("indomain", "models/indomain", None)


@pytest.mark.parametrize(
    "spec", ["", "ViT-B-32", "clip:ViT-B-32", "open_clip:", "open_clip:ViT-B-32:", "hf:", "indomain:", "hf:org/x@"]
)
def test_bad_specs_list_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError) as caught:
        create_scorer(spec, device="cpu")
    assert SPEC_FORMS in str(caught.value)


def test_unknown_architecture_and_tag() -> None:
    with pytest.raises(ValueError, match="ViT-B-32"):  # close match suggested
        create_scorer("open_clip:ViT-B-33", device="cpu")
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):  # known tags listed
        create_scorer("open_clip:ViT-B-32:no_such_tag", device="cpu")
    with pytest.raises(FileNotFoundError):
        create_scorer("open_clip:ViT-B-32:/nowhere/RemoteCLIP-ViT-B-32.pt", device="cpu")


@pytest.fixture
def empty_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline, with nothing cached: whatever is in the real cache must not make the test pass."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.usefixtures("empty_hf_cache")
def test_offline_pretrained_tag_says_what_to_do() -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        create_scorer("open_clip:ViT-B-32:openai", device="cpu")
    message = str(caught.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message  # which file
    assert "Hugging Face cache" in message  # where
    assert "open_clip:ViT-B-32:/path/to/checkpoint" in message  # or a local checkpoint


@pytest.mark.usefixtures("empty_hf_cache")
def test_offline_hub_id_says_what_to_do() -> None:
    with pytest.raises(WeightsNotFoundError, match="hf download openai/clip-vit-base-patch32"):
        create_scorer("hf:openai/clip-vit-base-patch32", device="cpu")


def test_hf_hub_id_is_served_from_the_cache(
    hf_clip: Scorer, hf_clip_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    # The Hugging Face cache layout, as `hf download org/tiny-clip` would leave it.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-clip"
    shutil.copytree(hf_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    scorer = create_scorer("hf:org/tiny-clip", device="cpu")
    assert scorer.scorer_id == f"hf:org/tiny-clip:{commit[:12]}"
    assert scorer.name == "tiny_clip"
    torch.testing.assert_close(scorer.encode_texts(fx.CAPTIONS), hf_clip.encode_texts(fx.CAPTIONS))


def test_missing_local_hf_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        create_scorer(f"hf:{tmp_path / 'absent'}", device="cpu")


def test_indomain_spec_calls_load_indomain(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("dldc.iel.indomain")
    fake.load_indomain = lambda path: calls.append(path) or "cross-fit scorer"
    monkeypatch.setitem(sys.modules, "dldc.iel.indomain", fake)
    assert create_scorer("indomain:models/indomain") == "cross-fit scorer"
    assert calls == ["models/indomain"]


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # building a CUDA autocast on a CPU-only machine
def test_device_and_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "fp32"  # autocast is CUDA-only
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    assert isinstance(autocast(torch.device("cuda"), "bf16"), torch.autocast)
    assert not isinstance(autocast(torch.device("cuda"), "fp32"), torch.autocast)
    assert not isinstance(autocast(cpu, "bf16"), torch.autocast)


def test_trimmed_text_encoding_equals_full_padding(oc: types.SimpleNamespace) -> None:
    import open_clip

    from dldc.iel.open_clip_scorer import can_trim_padding

    scorer = create_scorer(f"open_clip:{oc.config}:{oc.plain}", device="cpu")
    assert can_trim_padding(scorer.model)
    # "!" is id 0 in CLIP's vocabulary, like the padding: the trim must still keep the end-of-text token.
    texts = ["a", "two planes near a terminal", " ".join(["runway"] * 120), "a lake in the center surrounded by trees",
             "wow!; !; !; !; !; !; !; !; !; !; !; !; a lake !%"]  # fmt: skip
    tokens = open_clip.get_tokenizer("tiny-clip")(texts)
    with torch.no_grad():
        expected = F.normalize(oc.source.encode_text(tokens), dim=-1)
    torch.testing.assert_close(scorer.encode_texts(texts), expected, atol=ATOL, rtol=0)
    # Batch composition does not change a caption's embedding.
    torch.testing.assert_close(scorer.encode_texts(texts[:1]), expected[:1], atol=ATOL, rtol=0)
    torch.testing.assert_close(scorer.encode_texts(texts[-1:]), expected[-1:], atol=ATOL, rtol=0)
