"""Image batches for the scorers: batched preprocessing gives the same bits as open_clip's
per-image transform, and decoding workers live for the run, keep order and report failures."""

import os
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T

from dldc.iel.image_batches import ImageBatches, batch_preprocess, per_image_preprocess


def _images(seed=0):
    """Noise images of several shapes, so that resizing and cropping really change pixels."""
    rng = np.random.default_rng(seed)
    shapes = [(24, 24), (24, 40), (37, 24), (64, 48), (16, 20), (24, 24)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_batched_open_clip_transform_gives_the_same_bits_as_per_image(resize_mode, interpolation):
    transform = image_transform_v2(
        PreprocessCfg(size=24, resize_mode=resize_mode, interpolation=interpolation), is_train=False
    )
    images = _images()
    expected = torch.stack([transform(image) for image in images])
    batched = batch_preprocess(transform)
    assert type(batched).__name__ == "_Batched"  # the fast path was taken, not the fallback
    assert torch.equal(batched(images), expected)


def test_transforms_it_does_not_recognise_are_applied_image_by_image():
    def plain(image):  # a function, not a Compose
        return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)

    halves, tenths = T.Normalize([0.5] * 3, [0.5] * 3), T.Normalize([0.1] * 3, [2] * 3)
    two_normalizes = T.Compose([T.Resize((8, 8)), T.ToTensor(), halves, tenths])
    images = _images(1)
    for transform in (plain, two_normalizes):
        assert torch.equal(batch_preprocess(transform)(images), torch.stack([transform(im) for im in images]))
        assert type(batch_preprocess(transform)).__name__ == "_PerImage"


def test_grey_images_without_a_mode_step_fall_back_to_to_tensor_rules():
    transform = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])  # no convert("RGB"): 'L' stays 1 channel
    grey = [Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12), mode="L")] * 2
    assert torch.equal(batch_preprocess(transform)(grey), per_image_preprocess(transform)(grey))


def test_pil_steps_that_do_not_give_rgb_images_get_the_tensor_steps_per_image():
    from open_clip.transform import MaybeToTensor

    # PILToTensor gives uint8 CHW tensors, which MaybeToTensor passes through: no /255, no HWC
    transform = T.Compose([T.Resize(8), T.CenterCrop(8), T.PILToTensor(), MaybeToTensor()])
    images = _images(3)
    expected = torch.stack([transform(image) for image in images])
    assert expected.dtype == torch.uint8
    assert torch.equal(batch_preprocess(transform)(images), expected)


def _files(tmp_path, count):
    paths = []
    for index, image in enumerate((_images(2) * count)[:count]):
        path = tmp_path / f"{index}.png"
        image.save(path)
        paths.append(path)
    return paths


class _WorkerPid:
    """A picklable 'preprocess' that reports which process ran it."""

    def __call__(self, images):
        return torch.full((len(images), 1), os.getpid(), dtype=torch.int64)


class _Heavy:
    """A scorer whose preprocess is a bound method: pickling it would carry its 'model'."""

    def __init__(self):
        self.model = bytes(2 << 20)

    def preprocess(self, images):
        return torch.full((len(images), 1), os.getpid(), dtype=torch.int64)


class _Crash:
    def __call__(self, images):
        os._exit(3)


def test_workers_give_the_batches_of_the_main_process_in_order_and_live_for_the_run(tmp_path):
    paths = _files(tmp_path, 23)
    preprocess = batch_preprocess(image_transform_v2(PreprocessCfg(size=16), is_train=False))
    here = list(ImageBatches(0)(preprocess, paths, 5))
    assert [len(b) for b in here] == [5, 5, 5, 5, 3]
    with ImageBatches(2) as batches:
        assert all(torch.equal(a, b) for a, b in zip(here, batches(preprocess, paths, 5), strict=True))
        pids = {int(p) for _ in range(3) for batch in batches(_WorkerPid(), paths, 2) for p in batch}
    # three calls (three shards), one pair of worker processes, none of them this one
    assert len(pids) <= 2 and os.getpid() not in pids


def test_a_bad_file_or_a_dead_worker_raises_instead_of_hanging(tmp_path):
    paths = _files(tmp_path, 4)
    paths[2].write_bytes(b"not an image")
    preprocess = batch_preprocess(image_transform_v2(PreprocessCfg(size=16), is_train=False))
    for workers in (0, 1):
        with ImageBatches(workers) as batches, pytest.raises(OSError):
            list(batches(preprocess, paths, 2))
    with ImageBatches(1) as batches, pytest.raises(BrokenProcessPool):
        list(batches(_Crash(), paths[:2], 1))
    with pytest.raises(ValueError, match="workers"):
        ImageBatches(-1)


def test_a_preprocess_that_would_carry_a_model_or_cannot_pickle_runs_here(tmp_path, caplog):
    paths = _files(tmp_path, 4)
    lambdas = T.Compose([T.Resize((8, 8)), T.Lambda(lambda image: image), T.ToTensor()])  # no pickling
    with ImageBatches(1) as batches:
        pids = {int(p) for batch in batches(_Heavy().preprocess, paths, 2) for p in batch}
        assert pids == {os.getpid()}
        here = list(ImageBatches(0)(batch_preprocess(lambdas), paths, 2))
        assert all(torch.equal(a, b) for a, b in zip(here, batches(batch_preprocess(lambdas), paths, 2), strict=True))
    warnings = [r.getMessage() for r in caplog.records if "runs in the main process" in r.getMessage()]
    assert any("bytes" in w for w in warnings) and any("does not pickle" in w for w in warnings)
