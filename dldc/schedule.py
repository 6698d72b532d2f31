"""The learning-rate schedule of every training loop: linear warmup, then cosine decay (nanoGPT's ``get_lr``).

One function serves the T2I loops (:mod:`dldc.t2i.base`, :mod:`dldc.t2i.finetune`) and the
in-domain scorer (:mod:`dldc.iel.indomain_train`); they differ only in where the decay reaches its
floor (``decay_end``). The segmenter's ``LambdaLR`` (:mod:`dldc.segment.trainer`) is the same
curve with ``warmup=0, min_ratio=0, decay_end=steps`` but keeps its own expression: it rounds
``pi * step / steps`` in another order, and its trained weights stay bit-identical that way.

Example:
    >>> round(lr_at(0, 100, 1e-3, warmup=10), 6), round(lr_at(99, 100, 1e-3, warmup=10), 6)
    (0.0001, 0.0001)
    >>> round(lr_at(99, 100, 1e-3, warmup=10, decay_end=100), 8)  # one step short of the floor
    0.00010027
"""

from __future__ import annotations

import math

__all__ = ["MIN_LR_RATIO", "lr_at"]

MIN_LR_RATIO = 0.1  # cosine decay ends at lr / 10 (nanoGPT's min_lr)


def lr_at(
    step: int, total: int, lr: float, warmup: int, *, min_ratio: float = MIN_LR_RATIO, decay_end: int | None = None
) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_ratio``, flat after ``decay_end``.

    Args:
        step: the optimizer step, from 0.
        total: the run's number of steps; warmup is cut to ``total // 2`` so a short run still
            gets its cosine phase.
        lr: the peak learning rate.
        warmup: warmup steps (step ``s < warmup`` runs at ``lr * (s + 1) / warmup``).
        min_ratio: the floor, as a fraction of ``lr``.
        decay_end: the step at which the decay reaches the floor: ``None`` for the run's last step
            (``total - 1``; the T2I loops), ``total`` for the step after it (the in-domain scorer).

    Returns:
        The learning rate of ``step``.
    """
    warmup = min(warmup, total // 2)
    if step < warmup:
        return lr * (step + 1) / warmup
    end = total - 1 if decay_end is None else decay_end
    progress = (step - warmup) / max(1, end - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
