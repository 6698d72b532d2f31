"""The one learning-rate schedule (dldc.schedule.lr_at) against the three it replaced, number for number."""

from __future__ import annotations

import math

import pytest

from dldc.schedule import lr_at


def _t2i_before(step: int, total: int, lr: float, warmup: int) -> float:  # t2i/train_utils.py before issue 17
    warmup = min(warmup, total // 2)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return lr * (0.1 + (1 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _indomain_before(step: int, total: int, lr: float, warmup: int) -> float:  # iel/indomain.py before issue 17
    warmup = min(warmup, total // 2)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + (1 - 0.1) * 0.5 * (1 + math.cos(math.pi * progress)))


def _segment_before(step: int, steps: int) -> float:  # segment/trainer.py's LambdaLR factor (kept there)
    return 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


@pytest.mark.parametrize("total", [1, 2, 3, 7, 40, 101])
@pytest.mark.parametrize("warmup", [0, 1, 5, 20])
def test_same_numbers_as_the_schedules_it_replaced(total: int, warmup: int) -> None:
    for step in range(total):
        assert lr_at(step, total, 3e-4, warmup) == _t2i_before(step, total, 3e-4, warmup)
        assert lr_at(step, total, 3e-4, warmup, decay_end=total) == _indomain_before(step, total, 3e-4, warmup)
    for step in range(total + 3):  # segment/trainer.py's LambdaLR: the same curve, rounded otherwise
        factor = lr_at(step, total, 1.0, 0, min_ratio=0.0, decay_end=total)
        assert factor == pytest.approx(_segment_before(step, total), rel=1e-15, abs=1e-15)


def test_known_answers() -> None:
    # warmup: (step + 1) / warmup of the peak
    assert lr_at(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, 10) == pytest.approx(1e-3)
    # decay_end=None (T2I): the floor at the last step; decay_end=total (in-domain): one step short of it
    assert lr_at(10, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(99, 100, 1e-3, 10) == pytest.approx(1e-4)
    one_short = 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 89 / 90))
    assert lr_at(99, 100, 1e-3, 10, decay_end=100) == pytest.approx(one_short)
    # half way through the decay: the mean of peak and floor
    assert lr_at(55, 101, 1.0, 10) == pytest.approx(0.55)
    # the segmenter's factor: cosine 1 -> 0 over its steps, no warmup, flat after
    assert lr_at(0, 4, 1.0, 0, min_ratio=0.0, decay_end=4) == 1.0
    assert lr_at(2, 4, 1.0, 0, min_ratio=0.0, decay_end=4) == pytest.approx(0.5)
    assert lr_at(6, 4, 1.0, 0, min_ratio=0.0, decay_end=4) == pytest.approx(0.0)
    # a short run: warmup is cut to half the run
    assert lr_at(0, 4, 1.0, 50) == pytest.approx(0.5)
