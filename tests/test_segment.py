"""dldc segment: dataset layouts, patches, split by tile, metrics, trainer, synthetic protocols, wiring."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dldc.config import ConfigError, SegmentConfig, load_config
from dldc.data.class_tables import load_class_table
from dldc.data.synthrs import write_synthrs
from dldc.segment.datasets import (
    LAYOUTS,
    LabelSpace,
    Layout,
    cut_patches,
    list_pairs,
    load_patches,
    patch_origins,
    split_tiles,
)
from dldc.segment.experiment import load_splits, run_segment
from dldc.segment.metrics import bootstrap_intervals, confusion_matrix, scores
from dldc.segment.synthetic import PROMPTS_FILE
from dldc.segment.trainer import MODEL_FILE, load_segmenter, train_segmenter

DUBAI_COLOURS = {  # ../shared/data/README.md: the colours the masks really use
    "building": (0x3C, 0x10, 0x98),
    "land": (0x84, 0x29, 0xF6),
    "road": (0x6E, 0xC1, 0xE4),
    "vegetation": (0xFE, 0xDD, 0x3A),
    "water": (0xE2, 0xA9, 0x29),
    "unlabeled": (0x9B, 0x9B, 0x9B),
    "unannotated": (0, 0, 0),
}
# Tiny segmenters: one thread is the faster choice on a shared 2-core machine.
TINY = {"widths": [4, 8], "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "bootstrap": 20, "lr": 0.03,
        "threads": 1}  # fmt: skip


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb_mask(classes: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    return np.asarray(colours, np.uint8)[classes]


class StubRenderer:
    """A renderer without a model: an image drawn from each seed (arms differ by a tint)."""

    def __init__(self) -> None:
        self.calls = 0

    def settings(self, adapter: str) -> dict:
        return {"adapter": adapter}

    def render(self, prompts, seeds, adapter):
        self.calls += len(prompts)
        tint = 40 if adapter else 0
        return [
            Image.fromarray(
                np.clip(np.random.default_rng(int(s)).integers(0, 200, (8, 8, 3)) + tint, 0, 255).astype(np.uint8)
            )
            for s in seeds
        ]


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_known_answers() -> None:
    target = np.array([[0, 0, 1], [1, 2, 255]])
    predicted = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(target, predicted, num_classes=4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # the 255 pixel is left out
    result = scores(cm)
    # IoU: class 0 = 1/(2+2-1), class 1 = 2/(2+3-2), class 2 = 0/(1+0-0); class 3 absent everywhere: NaN
    assert result["IoU"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and np.isnan(result["IoU"][3])
    assert result["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert result["Acc"][:3] == pytest.approx([0.5, 1.0, 0.0]) and result["mAcc"] == pytest.approx(0.5)
    assert result["aAcc"] == pytest.approx(3 / 5)
    assert scores(np.diag([5, 3]))["mIoU"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="predictions must be in 0..1"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 2]), 2)


def test_bootstrap_intervals_resample_tiles() -> None:
    same = {f"t{i}": np.array([[4, 1], [1, 4]]) for i in range(6)}
    point = scores(np.array([[4, 1], [1, 4]]))["mIoU"]
    assert bootstrap_intervals(same, resamples=30)["mIoU"] == pytest.approx([point, point])
    mixed = {"good": np.diag([10, 10]), "bad": np.array([[0, 10], [10, 0]]), "mid": np.array([[5, 5], [5, 5]])}
    low, high = bootstrap_intervals(mixed, resamples=200, seed=1)["mIoU"]
    overall = scores(sum(mixed.values()))["mIoU"]
    assert 0.0 <= low < overall < high <= 1.0
    assert bootstrap_intervals(mixed, resamples=200, seed=1) == bootstrap_intervals(mixed, resamples=200, seed=1)
    assert bootstrap_intervals(mixed, resamples=0) == {}


# ------------------------------------------------------------------------------ patches and splits


def test_patches_cover_every_pixel_and_evaluation_counts_each_once() -> None:
    assert patch_origins(100, 40, 40) == [0, 40, 60]
    assert patch_origins(30, 40, 40) == [0]
    image = np.arange(70 * 50 * 3, dtype=np.uint32).reshape(70, 50, 3).astype(np.uint8)
    labels = np.random.default_rng(0).integers(0, 3, (70, 50)).astype(np.uint8)
    images, masks, origins = cut_patches(image, labels, patch=32, stride=32)
    assert origins == [(t, lf) for t in (0, 32, 38) for lf in (0, 18)]
    assert all((images[i] == image[t : t + 32, lf : lf + 32]).all() for i, (t, lf) in enumerate(origins))
    _, exclusive, _ = cut_patches(image, labels, patch=32, stride=32, exclusive=True)
    counted = np.bincount(exclusive[exclusive != 255].ravel(), minlength=3)
    assert counted.tolist() == np.bincount(labels.ravel(), minlength=3).tolist()  # each pixel exactly once
    small_images, small_masks, _ = cut_patches(image[:10, :20], labels[:10, :20], patch=16, stride=16)
    assert small_images.shape == (2, 16, 16, 3) and (small_masks[:, 10:, :] == 255).all()


def test_split_is_by_tile_seeded_and_leak_free(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colours = list(DUBAI_COLOURS.values())[:5]
    for tile in range(1, 4):
        for part in range(1, 4):
            _save(tmp_path / f"tile_{tile}/images/image_part_00{part}.jpg", rng.integers(0, 255, (40, 48, 3), np.uint8))
            mask = _rgb_mask(rng.integers(0, 5, (40, 48)), colours)
            _save(tmp_path / f"tile_{tile}/masks/image_part_00{part}.png", mask)
    cfg = SegmentConfig(dataset="dubai", root=str(tmp_path), patch_size=16, split_ratios=[0.4, 0.3, 0.3])
    space, splits, assignment, rejects = load_splits(cfg)
    assert rejects == [] and len(assignment) == 9 and sorted(set(assignment.values())) == ["test", "train", "val"]
    assert space.names == ("building", "land", "road", "vegetation", "water")
    tiles = {name: set(part.tiles) for name, part in splits.items()}
    assert not (tiles["train"] & tiles["test"]) and not (tiles["train"] & tiles["val"])
    assert not tiles["val"] & tiles["test"]
    assert all(len(part) == 9 * len(tiles[name]) for name, part in splits.items())  # 3x3 patches of 40x48
    assert load_splits(cfg)[2] == assignment  # fixed by the seed
    assert split_tiles(list(assignment), (0.4, 0.3, 0.3), seed=1) != assignment
    by_folder = split_tiles([f"tile_{t}" for t in (1, 2, 3)], (0.4, 0.3, 0.3), seed=0)
    folder_cfg = cfg.model_copy(update={"split_by": "folder"})
    _, folder_splits, folder_assignment, _ = load_splits(folder_cfg)
    assert folder_assignment == by_folder
    for name, part in folder_splits.items():
        assert {s.split("/")[0] for s in part.sources} == {t for t, s in by_folder.items() if s == name}


# ---------------------------------------------------------------------------------- dataset readers


def test_dubai_reader_uses_the_true_colours_and_ignores_unlabeled(tmp_path: Path) -> None:
    names = list(DUBAI_COLOURS)
    classes = np.array([[0, 1, 2, 3], [4, 5, 6, 1]])
    _save(tmp_path / "tile_1/images/image_part_001.jpg", np.zeros((2, 4, 3), np.uint8))
    mask = _rgb_mask(classes, [DUBAI_COLOURS[n] for n in names])
    (tmp_path / "tile_1/masks").mkdir()
    Image.fromarray(mask).quantize(colors=8).save(tmp_path / "tile_1/masks/image_part_001.png")  # a palette PNG
    space = LabelSpace.from_table(load_class_table("dubai-seg"))
    listing = list_pairs(tmp_path, LAYOUTS["dubai"])
    patches = load_patches(tmp_path, listing.pairs, space, patch=4)
    assert patches.labels[0, :2].tolist() == [[0, 1, 2, 3], [4, 255, 255, 1]]
    # The shipped classes.original.json colours (e.g. building #D0021B) are not in the masks: a clear error.
    wrong = _rgb_mask(np.zeros((2, 4), int), [(0xD0, 0x02, 0x1B)])
    Image.fromarray(wrong).save(tmp_path / "tile_1/masks/image_part_001.png")
    with pytest.raises(ValueError, match="not in class table 'dubai-seg'"):
        load_patches(tmp_path, listing.pairs, space, patch=4)
    rejects: list = []
    assert len(load_patches(tmp_path, listing.pairs, space, patch=4, rejects=rejects)) == 0
    assert rejects[0]["reason"] == "unreadable" and "#D0021B" in rejects[0]["detail"]


def test_real_dubai_mask_reads_with_the_readme_table() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai-seg"
    if not (root / "tile_1").is_dir():
        pytest.skip(f"real data not found at {root}")
    listing = list_pairs(root, LAYOUTS["dubai"])
    assert len(listing.pairs) == 72 and not listing.rejects
    space = LabelSpace.from_table(load_class_table("dubai-seg"))
    patches = load_patches(root, listing.pairs[:1], space, patch=128, scale=0.25)
    labelled = patches.labels[patches.labels != 255]
    assert labelled.size > 0.9 * (patches.labels != 255).size and labelled.max() < 5


@pytest.mark.parametrize("layout", ["loveda", "potsdam", "vaihingen", "deepglobe"])
def test_public_dataset_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 5, (12, 12))
    table = load_class_table(LAYOUTS[layout].table)
    space = LabelSpace.from_table(table)
    if layout == "loveda":
        images = ["Train/Urban/images_png/1.png", "Val/Rural/images_png/7.png"]
        masks = ["Train/Urban/masks_png/1.png", None]  # LoveDA's test images ship without masks
        label_image = (classes + 1).astype(np.uint8)  # index masks: 0 = no-data
        label_image[0, 0] = 0
    else:
        images = {
            "potsdam": ["2_Ortho_RGB/top_potsdam_2_10_RGB.tif", "2_Ortho_RGB/top_potsdam_7_7_RGB.tif"],
            "vaihingen": ["top/top_mosaic_09cm_area1.tif", "top/top_mosaic_09cm_area2.tif"],
            "deepglobe": ["train/104_sat.jpg", "train/9_sat.jpg"],
        }[layout]
        masks = [LAYOUTS[layout].mask_for(images[0]), None]
        label_image = _rgb_mask(classes, [c.color for c in table.classes[:5]])
        if layout == "deepglobe":  # off-colour pixels, binarised at 128
            label_image = np.where(label_image > 128, label_image - 3, label_image + 3).astype(np.uint8)
    for image, mask in zip(images, masks):
        _save(tmp_path / image, rng.integers(0, 255, (12, 12, 3), np.uint8))
        if mask:
            _save(tmp_path / mask, label_image)
    listing = list_pairs(tmp_path, LAYOUTS[layout])
    assert [p.image for p in listing.pairs] == [images[0]]
    assert [r["reason"] for r in listing.rejects] == ["missing_mask"]  # recorded, not dropped silently
    patches = load_patches(tmp_path, listing.pairs, space, patch=12, binarize=LAYOUTS[layout].binarize)
    expected = classes.astype(np.uint8)
    if layout == "loveda":
        expected[0, 0] = 255
    assert (patches.labels[0] == expected).all()


def test_paths_cannot_escape_the_dataset_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _save(root / "images/a.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "outside/a.png", np.zeros((4, 4), np.uint8))
    escaping = Layout("images/*.png", r"images/(.+)", r"../outside/\1", "synthrs")
    listing = list_pairs(root, escaping)
    assert listing.pairs == [] and listing.rejects[0]["reason"] == "path_escape"
    with pytest.raises(FileNotFoundError, match="no image matches"):
        list_pairs(root, Layout("nothing/*.png", "x", "y", "synthrs"))


# ------------------------------------------------------------------------------------------ trainer


def _stripes(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable patches: class = which of three colours a pixel has (plus noise)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cut = rng.integers(3, size - 3, 2)
        labels[i, : cut[0]] = 1
        labels[i, :, : cut[1]] = 2
    colours = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)], np.int64)
    images = np.clip(colours[labels] + rng.integers(-20, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


def _patchset(images: np.ndarray, labels: np.ndarray, prefix: str):
    from dldc.segment.datasets import PatchSet

    return PatchSet(images, labels, [f"{prefix}{i}" for i in range(len(images))], [f"{prefix}{i}.png" for i in
                                                                                      range(len(images))],
                    [(0, 0)] * len(images))  # fmt: skip


def test_trainer_learns_and_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    train, val = _patchset(*_stripes(24), "a"), _patchset(*_stripes(6, seed=1), "b")
    cfg = SegmentConfig(**{**TINY, "steps": 40, "checkpoint_every": 4, "eval_every": 40})
    full = train_segmenter(train, val, 3, cfg, tmp_path / "full", progress=False)
    assert full["val_curve"][-1][1] > 0.75 and full["losses"][-1] < full["losses"][0]  # known answer: learnable
    assert train_segmenter(train, val, 3, cfg, tmp_path / "full", progress=False)["reused"] is True
    stopped = train_segmenter(train, val, 3, cfg, tmp_path / "killed", progress=False, stop_after=6)
    assert stopped == {"stopped_at": 6}  # the last checkpoint is at step 4
    resumed = train_segmenter(train, val, 3, cfg, tmp_path / "killed", progress=False)
    assert resumed["resumed_from"] == [4]
    a = load_segmenter(tmp_path / "full", 3, cfg).state_dict()
    b = load_segmenter(tmp_path / "killed", 3, cfg).state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    other = cfg.model_copy(update={"seed": 1})  # other settings: a stale checkpoint is not resumed
    restarted = train_segmenter(train, val, 3, other, tmp_path / "killed", progress=False, stop_after=1)
    assert restarted == {"stopped_at": 1}  # began at step 0, not at the stale step 40
    with pytest.raises(ValueError, match="training labels must be < 2"):
        train_segmenter(train, val, 2, cfg, tmp_path / "bad", progress=False)


def test_torchvision_models_build_without_weights() -> None:
    from dldc.segment.models import create_segmenter

    model = create_segmenter("lraspp", num_classes=3)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown segmentation model"):
        create_segmenter("segformer", 3)


# ------------------------------------------------------------------------------ protocols and arms


@pytest.fixture(scope="module")
def synthrs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "synthrs"
    write_synthrs(root, n_images=20, size=16, progress=False)
    return root


def test_both_protocols_all_arms_one_table(synthrs: Path, tmp_path: Path) -> None:
    cfg = SegmentConfig(
        **{**TINY, "steps": 4}, root=str(synthrs), patch_size=16, synthetic_per_arm=5,
        arms={"base": "", "raw": "adapters/raw", "clean": "adapters/clean"}, out=str(tmp_path / "out"),
    )  # fmt: skip
    renderer = StubRenderer()
    report = run_segment(cfg, progress=False, renderer=renderer)
    expected = {"real"} | {f"{p}/{a}" for p in ("pseudo-label", "layout-prompt") for a in ("base", "raw", "clean")}
    assert set(report["runs"]) == expected and renderer.calls == 15  # 5 images per arm, shared by both protocols
    real_patches = report["runs"]["real"]["train_patches"]
    rejects = pd.read_parquet(Path(cfg.out) / "rejects.parquet")
    for arm, info in report["synthetic"].items():
        assert report["runs"][f"pseudo-label/{arm}"]["train_patches"] == real_patches + 5
        kept = info["layout_filter_kept"]  # layout-prompt keeps the images that show their layout
        assert report["runs"][f"layout-prompt/{arm}"]["train_patches"] == real_patches + kept
        assert report["runs"][f"layout-prompt/{arm}"]["extra_patches"] == kept
        assert 0.0 <= info["layout_fidelity"] <= 1.0
        of_arm = rejects["image"].str.startswith(f"synthetic:{arm}/")
        filtered = rejects[(rejects["reason"] == "layout_filter") & of_arm]
        assert len(filtered) == 5 - kept  # every filtered image is recorded with its agreement
    assert "Layout fidelity" in (Path(cfg.out) / "results.md").read_text()
    assert {run["test_tiles"] for run in report["runs"].values()} == {report["data"]["test"]["tiles"]}
    out = Path(cfg.out)
    table = (out / "results.md").read_text()
    assert "| layout-prompt | clean |" in table and "| pseudo-label | raw |" in table and "| none | real |" in table
    prompts = pd.read_parquet(out / "synthetic" / PROMPTS_FILE)
    assert len(prompts) == 5 and prompts["prompt"].str.len().min() > 10
    split = json.loads((out / "split.json").read_text())
    assert {split[t] for t in prompts["tile"]} == {"train"}  # prompts only from real training masks
    assert prompts["scene"].isin(["farmland", "residential", "forest", "river", "lake", "beach", "airport", "parking",
                                  "industrial", "desert"]).all()  # fmt: skip
    per_class = pd.read_parquet(out / "per_class.parquet")
    assert len(per_class) == 7 * 10 and set(per_class["protocol"]) == {"none", "pseudo-label", "layout-prompt"}
    summary = json.loads((out / "segment.json").read_text())
    assert "mIoU_low" in summary["layout-prompt.clean"]
    again = run_segment(cfg, progress=False, renderer=renderer)  # same inputs: nothing recomputed
    assert renderer.calls == 15 and all(run["reused"] for run in again["runs"].values())


def test_layout_filter_off_keeps_every_synthetic_image(synthrs: Path, tmp_path: Path) -> None:
    cfg = SegmentConfig(
        **{**TINY, "steps": 2}, root=str(synthrs), patch_size=16, synthetic_per_arm=3, arms={"clean": "x"},
        protocols=["layout-prompt"], layout_filter=None, out=str(tmp_path / "out"),
    )  # fmt: skip
    report = run_segment(cfg, progress=False, renderer=StubRenderer())
    assert report["runs"]["layout-prompt/clean"]["extra_patches"] == 3
    assert "layout_filter_kept" not in report["synthetic"]["clean"]
    with pytest.raises(ValueError, match="layout_filter"):
        SegmentConfig(layout_filter=0.0)


def test_layout_prompt_masks_are_the_source_masks(synthrs: Path, tmp_path: Path) -> None:
    from dldc.segment.synthetic import layout_prompts, synthrs_scene

    cfg = SegmentConfig(root=str(synthrs), patch_size=16, synthetic_per_arm=4)
    space, splits, _, _ = load_splits(cfg)
    prompts, _, picked = layout_prompts(splits["train"], space, cfg, synthrs_scene)
    for row, index in zip(prompts.itertuples(), picked):
        assert splits["train"].sources[index] == row.source
        with Image.open(synthrs / row.source.replace("images/", "masks/")) as mask:
            assert (np.asarray(mask) == splits["train"].labels[index]).all()
    again, _, _ = layout_prompts(splits["train"], space, cfg, synthrs_scene)
    assert again.equals(prompts)  # same prompts and seeds whatever the arm


def test_diffusers_renderer_on_a_dummy_base(tmp_path: Path) -> None:
    from dldc.segment.synthetic import DiffusersRenderer
    from dldc.t2i.models import save_dummy_base

    base = str(save_dummy_base(tmp_path / "base"))
    cfg = SegmentConfig(base=base, gen_steps=1, device="cpu")
    renderer = DiffusersRenderer(cfg)
    first = renderer.render(["a lake scene", "a forest scene"], [1, 2], "")
    again = renderer.render(["a lake scene"], [1], "")
    assert first[0].size == (8, 8) and np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert renderer.settings("")["base_digest"]
    with pytest.raises(FileNotFoundError, match="run `dldc finetune` first"):
        renderer.settings(str(tmp_path / "no-adapter"))


# ------------------------------------------------------------------------------------------- wiring


def test_config_section_profiles_and_errors() -> None:
    assert load_config(None).segment.model == "unet"
    paper = load_config(None, overrides=["profile=paper"]).segment
    assert paper.dataset == "dubai" and paper.model == "deeplabv3" and paper.device == "cuda"
    with pytest.raises(ConfigError, match="segment"):
        load_config(None, overrides=["segment.arms={real: ''}"])
    with pytest.raises(ConfigError, match="segment.stride"):
        load_config(None, overrides=["segment.stride=0"])
    with pytest.raises(ValueError, match="needs segment.classes"):
        from dldc.segment.experiment import layout_of

        layout_of(SegmentConfig(dataset="folder"))


def test_cli_real_only_logs_to_mlflow(synthrs: Path, tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow
    from click.testing import CliRunner

    from dldc.cli import main

    out = tmp_path / "seg"
    args = ["--no-progress", "-S", f"tracking.uri={mlflow_uri}", "-S", "segment.patch_size=16", "-S",
            "segment.widths=[4, 8]", "-S", "segment.batch_size=4", "-S", "segment.bootstrap=10",
            "-S", "segment.threads=1",
            "segment", "--root", str(synthrs), "--out", str(out), "--real-only", "--steps", "2"]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| none | real |" in result.output
    assert (out / "runs" / "real" / MODEL_FILE).is_file()
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(filter_string="attributes.run_name = 'segment'", output_format="list",
                              search_all_experiments=True)  # fmt: skip
    assert runs and "real.mIoU" in runs[0].data.metrics and "real.loss" in runs[0].data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"results.md", "per_class.parquet"} <= artifacts
    plots = [a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "plots")]
    assert plots == ["plots/confusion_real.png"]


def test_segment_component_compiles_to_the_dldc_segment_call_on_a_gpu(tmp_path: Path, monkeypatch) -> None:
    import types

    import yaml
    from kfp import compiler, dsl

    import dldc.run
    from components.segment import segment
    from components.synth import synth
    from pipelines.dldc_pipeline import _place

    @dsl.pipeline(name="segment-only")
    def segment_only(settings: list = []):  # noqa: B006
        data = synth(n_images=20, size=16, noise_rate=0.0, seed=0, settings=settings, profile="demo")
        _place(segment(dataset=data.outputs["dataset"], settings=settings, profile="demo"), "segment")

    path = tmp_path / "segment.yaml"
    compiler.Compiler().compile(segment_only, package_path=str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    executor = spec["deploymentSpec"]["executors"]["exec-segment"]["container"]
    assert executor["resources"]["accelerator"]["resourceCount"] == "1" and executor["image"].endswith("-cuda")
    assert executor["args"][-2:] == ["--function_to_execute", "segment"]
    interface = spec["components"]["comp-segment"]
    assert set(interface["inputDefinitions"]["artifacts"]) == {
        "dataset", "base_model", "raw_adapter", "clean_adapter", "global_adapter"
    }  # fmt: skip
    assert interface["inputDefinitions"]["parameters"]["dataset_layout"]["defaultValue"] == "synthrs"
    assert interface["inputDefinitions"]["parameters"]["dataset_folder"]["defaultValue"] == ""
    assert set(interface["outputDefinitions"]["artifacts"]) == {"evaluation", "summary"}
    wiring = spec["root"]["dag"]["tasks"]["segment"]["inputs"]
    assert wiring["artifacts"]["dataset"]["taskOutputArtifact"] == {"outputArtifactKey": "dataset",
                                                                     "producerTask": "synth"}  # fmt: skip

    # Run the program the container runs (the source embedded in the executor's command) with
    # stand-in artifacts, and catch the `dldc` command line it runs.
    namespace: dict = {}
    exec(compile(executor["command"][-1], "ephemeral_component.py", "exec"), namespace)
    program = namespace[executor["args"][-1]]
    calls = []

    def fake_run_stage(args, settings, metrics_from, profile):
        calls.append((args, settings, profile))
        assert metrics_from == args[args.index("--out") + 1]  # the stage's metrics.json is what gets logged
        return {"real.mIoU": 0.5, "pseudo-label.raw.mIoU": 0.25}

    monkeypatch.setattr(dldc.run, "run_stage", fake_run_stage)
    metrics: dict = {}
    artifact, summary = types.SimpleNamespace, types.SimpleNamespace(log_metric=metrics.__setitem__)
    program(dataset=artifact(path="/in/synthrs"), evaluation=artifact(path=str(tmp_path / "a")), summary=summary,
            settings=["segment.steps=2"], profile="paper", base_model=artifact(path="/in/base"),
            raw_adapter=artifact(path="/in/raw"), global_adapter=artifact(path="/in/global"))  # fmt: skip
    assert calls == [(
        ["segment", "--dataset", "synthrs", "--root", "/in/synthrs", "--out", str(tmp_path / "a"),
         "--arm", "base=", "--arm", "raw=/in/raw", "--arm", "global=/in/global", "--base", "/in/base"],
        ["segment.steps=2"],
        "paper",
    )]  # fmt: skip
    assert metrics == {"real.mIoU": 0.5, "pseudo-label.raw.mIoU": 0.25}
    program(dataset=artifact(path="/in/dubai"), evaluation=artifact(path=str(tmp_path / "b")), summary=summary,
            settings=[], profile="", dataset_layout="dubai", base="hub/sd")  # fmt: skip
    assert calls[1][0] == ["segment", "--dataset", "dubai", "--root", "/in/dubai", "--out", str(tmp_path / "b"),
                           "--arm", "base=", "--base", "hub/sd"]  # fmt: skip
    # In the pipeline: SynthRS as ingest's copy, the `dataset` folder of the manifest artifact.
    program(dataset=artifact(path="/in/manifest"), evaluation=artifact(path=str(tmp_path / "c")), summary=summary,
            settings=[], profile="", dataset_folder="dataset")  # fmt: skip
    assert calls[2][0][3:5] == ["--root", "/in/manifest/dataset"]


def test_paired_batches_share_real_patches_and_sample_the_union_uniformly() -> None:
    from dldc.segment.trainer import batch_for_step

    steps = range(2000)
    real_only = np.concatenate([batch_for_step(3, s, 50, 8)[0] for s in steps])
    paired = np.concatenate([batch_for_step(3, s, 50, 8, n_extra=25)[0] for s in steps])
    is_extra = paired >= 50
    assert (paired[~is_extra] == real_only[~is_extra]).all()  # common random numbers: same real patch per slot
    assert abs(is_extra.mean() - 25 / 75) < 0.02  # the union is sampled uniformly: P(extra) = n_extra / n
    counts = np.bincount(paired, minlength=75)
    assert counts.min() > 0.6 * counts.mean() and paired.max() == 74
    again = batch_for_step(3, 7, 50, 8, n_extra=25)  # a batch depends only on (seed, step)
    assert all((a == b).all() for a, b in zip(again, batch_for_step(3, 7, 50, 8, n_extra=25)))


def test_extra_patches_change_the_fingerprint_and_are_counted(tmp_path: Path) -> None:
    train, val = _patchset(*_stripes(12), "a"), _patchset(*_stripes(4, seed=1), "b")
    extra = _patchset(*_stripes(6, seed=2), "s")
    cfg = SegmentConfig(**{**TINY, "steps": 4, "eval_every": 4})
    alone = train_segmenter(train, val, 3, cfg, tmp_path / "real", progress=False)
    mixed = train_segmenter(train, val, 3, cfg, tmp_path / "mixed", progress=False, extra=extra)
    assert (alone["train_patches"], alone["extra_patches"]) == (12, 0)
    assert (mixed["train_patches"], mixed["extra_patches"]) == (18, 6)
    assert alone["fingerprint"] != mixed["fingerprint"]
    bad = _patchset(np.zeros((1, 16, 16, 3), np.uint8), np.full((1, 16, 16), 7, np.uint8), "x")
    with pytest.raises(ValueError, match="training labels must be < 3"):
        train_segmenter(train, val, 3, cfg, tmp_path / "bad", progress=False, extra=bad)


def test_class_weighting_weighs_rare_classes_up_and_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    from dldc.segment.trainer import MAX_CLASS_WEIGHT, class_weights

    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, 0, :2] = 1  # class 1: 2% of the pixels; class 2 absent; one ignored pixel
    labels[0, 9, 9] = 255
    weights = class_weights(labels, 3, 255, "inverse_sqrt")
    assert weights[1] > weights[0] > 0 and weights[2] == 0
    assert np.isclose(weights[:2].mean(), 1.0) and class_weights(labels, 3, 255, "none") is None
    many = np.append(np.repeat(np.arange(19), 1000), 19).astype(np.uint8).reshape(1, 1, -1)  # class 19: one pixel
    assert class_weights(many, 20, 255, "inverse_sqrt")[19] == MAX_CLASS_WEIGHT  # 12.5 before the cap
    train, val = _patchset(*_stripes(12), "a"), _patchset(*_stripes(4, seed=1), "b")
    cfg = SegmentConfig(**{**TINY, "steps": 2, "eval_every": 2})
    weighted = train_segmenter(train, val, 3, cfg, tmp_path / "w", progress=False)
    plain = train_segmenter(train, val, 3, cfg.model_copy(update={"class_weighting": "none"}), tmp_path / "n",
                            progress=False)  # fmt: skip
    assert len(weighted["class_weights"]) == 3 and plain["class_weights"] is None
    assert weighted["fingerprint"] != plain["fingerprint"]
    with pytest.raises(ValueError, match="class_weighting"):
        SegmentConfig(class_weighting="inverse")
