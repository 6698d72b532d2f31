"""Image files → preprocessed ``(N, 3, H, W)`` batches for a scorer's image encoder.

Two costs sit beside the model here, and at a million small images they outweighed it
(``benchmarks/scale.py --bookkeeping``):

* **Preprocessing one image at a time.** open_clip's eval transform is a torchvision
  ``Compose`` of PIL steps (resize, centre crop, RGB) and tensor steps (``ToTensor``,
  ``Normalize``). :func:`batch_preprocess` keeps the PIL steps per image and runs the tensor
  steps once per batch, with the same float32 operations in the same order, so the pixels are
  bit-identical (tested). Transforms it does not recognise are applied per image and stacked.
* **Worker processes started per shard.** :class:`ImageBatches` keeps its decoding workers for
  the whole scoring run instead of forking a fresh set for every shard's few hundred images.

>>> from PIL import Image
>>> from torchvision import transforms as T
>>> transform = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
>>> images = [Image.new("RGB", (12, 8), (255, 0, 128)), Image.new("RGB", (8, 8), (0, 64, 255))]
>>> batch = batch_preprocess(transform)(images)
>>> batch.shape, bool((batch == torch.stack([transform(image) for image in images])).all())
(torch.Size([2, 3, 8, 8]), True)
"""

from __future__ import annotations

import logging
import pickle
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from dldc.data.images import load_rgb

BatchPreprocess = Callable[[Sequence[Image.Image]], torch.Tensor]
# A preprocess is pickled into every batch sent to a worker: a transform is a few KB; more means
# it carries a model (a scorer's bound method) and is run in the main process instead.
MAX_PICKLED_PREPROCESS = 1 << 20
log = logging.getLogger(__name__)


def batch_preprocess(transform: Callable[[Image.Image], torch.Tensor]) -> BatchPreprocess:
    """A function mapping a list of RGB PIL images to the stacked output of ``transform``.

    When ``transform`` is a ``Compose`` ending in ``ToTensor`` (or a subclass, such as
    open_clip's ``MaybeToTensor``) and at most one ``Normalize``, the tensor steps run on the whole
    batch; anything else is applied per image and stacked. Either way the result equals
    ``torch.stack([transform(image) for image in images])`` exactly.
    """
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else []
    tail = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    rest = steps[tail + 1 :] if tail is not None else []
    if tail is None or not all(isinstance(step, T.Normalize) for step in rest) or len(rest) > 1:
        return per_image_preprocess(transform)
    return _Batched(steps[:tail], steps[tail], rest[0] if rest else None)


def per_image_preprocess(transform: Callable[[Image.Image], torch.Tensor]) -> BatchPreprocess:
    """``transform`` applied image by image, the outputs stacked (what :func:`batch_preprocess`
    falls back to)."""
    return _PerImage(transform)


class _PerImage:
    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]):
        self.transform = transform

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    def __repr__(self) -> str:
        return f"per-image {self.transform!r}"


class _Batched:
    """PIL steps per image, then ``ToTensor`` + ``Normalize`` once over the batch.

    ``ToTensor`` of an 8-bit image is ``uint8 → float32, ÷ 255`` and ``Normalize`` is
    ``(x − mean) ÷ std`` with float32 mean and std: element-wise, correctly rounded operations,
    so doing them on a batch gives the same bits as doing them per image.
    """

    def __init__(self, pil_steps: list[Any], to_tensor: T.ToTensor, normalize: T.Normalize | None):
        self.pil_steps = pil_steps
        self.tail = T.Compose([to_tensor] + ([normalize] if normalize is not None else []))
        self.normalize = normalize

    def __repr__(self) -> str:
        return f"batched {T.Compose(self.pil_steps + list(self.tail.transforms))!r}"

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        outputs = [self._pil(image) for image in images]
        rgb = all(isinstance(o, Image.Image) and o.mode == "RGB" for o in outputs)
        if not rgb or len({o.size for o in outputs}) != 1:
            # Mixed sizes, or not 8-bit RGB images: the tensor steps per image, by their own rules.
            return torch.stack([self.tail(output) for output in outputs])
        pixels = torch.from_numpy(np.stack([np.asarray(o) for o in outputs])).permute(0, 3, 1, 2).contiguous()
        pixels = pixels.to(torch.get_default_dtype()).div(255)
        if self.normalize is not None:
            mean = torch.as_tensor(self.normalize.mean, dtype=pixels.dtype).view(1, -1, 1, 1)
            std = torch.as_tensor(self.normalize.std, dtype=pixels.dtype).view(1, -1, 1, 1)
            if (std == 0).any():
                raise ValueError(f"Normalize std has a zero: {self.normalize.std}")
            pixels = pixels.sub_(mean).div_(std)
        return pixels

    def _pil(self, image: Image.Image) -> Any:
        for step in self.pil_steps:
            # A centre crop to the size the image already has is the identity; skipping it
            # saves most of the per-image cost on images already at the model's resolution.
            if isinstance(step, T.CenterCrop) and _has_size(image, step.size):
                continue
            image = step(image)
        return image


def _has_size(image: Any, size: Sequence[int]) -> bool:
    return isinstance(image, Image.Image) and (image.height, image.width) == tuple(size)


def _one_thread() -> None:
    # A forked child must not use the parent's OpenMP pool (it deadlocks), and decoding
    # workers should not compete with the model's threads: one thread each, as in DataLoader workers.
    torch.set_num_threads(1)


def load_batch(preprocess: BatchPreprocess, paths: Sequence[Path]) -> torch.Tensor:
    """Decode ``paths`` to RGB (:func:`dldc.data.images.load_rgb`) and preprocess them as one batch."""
    return preprocess([load_rgb(path) for path in paths])


class ImageBatches:
    """Yields preprocessed batches of image files, in order, decoded here or by worker processes.

    With ``workers`` > 0 the batches are decoded in a pool of that many processes, started on
    first use and kept until :meth:`close`, so a run of many shards forks its workers once. At
    most ``2 × workers`` batches are in flight, which bounds memory.

    Errors raised while decoding (a corrupt or missing file) are raised here, by the batch's turn.
    """

    def __init__(self, workers: int = 0):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self._pool: Any = None
        self._shippable: list[tuple[BatchPreprocess, bool]] = []

    def __call__(self, preprocess: BatchPreprocess, paths: Sequence[Path], batch_size: int) -> Iterator[torch.Tensor]:
        chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        if not self.workers or not self._can_ship(preprocess):
            for chunk in chunks:
                yield load_batch(preprocess, chunk)
            return
        if self._pool is None:
            # torch's multiprocessing moves result tensors through shared memory, as a DataLoader
            # does; a worker that dies raises BrokenProcessPool here instead of hanging the run.
            import torch.multiprocessing as mp

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"), initializer=_one_thread)
        pending: deque[Future[torch.Tensor]] = deque()
        try:
            for chunk in chunks:
                pending.append(self._pool.submit(load_batch, preprocess, chunk))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error, or a caller that stops early: the queued batches are not decoded for nothing
            for future in pending:
                future.cancel()

    def _can_ship(self, preprocess: BatchPreprocess) -> bool:
        """Whether ``preprocess`` travels to the workers cheaply: each batch carries it pickled.

        A preprocess that does not pickle, or pickles big (a bound method of a scorer carries its
        model), is run here instead, with a warning, rather than failing or copying a model per batch.
        """
        for known, ok in self._shippable:
            if known is preprocess:
                return ok
        try:
            size = len(pickle.dumps(preprocess))
            ok, why = size <= MAX_PICKLED_PREPROCESS, f"it pickles to {size:,} bytes"
        except Exception as err:  # noqa: BLE001  (any pickling failure means: not shippable)
            ok, why = False, f"it does not pickle ({type(err).__name__}: {err})"
        if not ok:
            log.warning("image preprocessing %r runs in the main process, not in decoding workers: %s", preprocess, why)
        self._shippable.append((preprocess, ok))
        return ok

    def close(self) -> None:
        """Stop the worker processes (a no-op without workers)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ImageBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
