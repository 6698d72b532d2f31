"""Generation-quality evaluation: FID/KID, FD/KD in IEL feature spaces, CLIP scores, per scene.

:func:`evaluate_generations` is the entry point (``dldc evaluate`` and the benchmarks call it).
Every metric carries its direction (:class:`Metric`'s ``higher_is_better``); readers of an
evaluation take it from the evaluation's rows with :func:`metric_directions`.
"""

from dldc.evaluate.evaluate import evaluate_generations
from dldc.evaluate.metrics import ALL_SCENES, Metric, metric_directions
from dldc.evaluate.results import (
    SUMMARY_FILE,
    EvaluationResult,
    read_evaluation,
    read_replicates,
    summary,
    write_evaluation,
)

__all__ = [
    "ALL_SCENES",
    "SUMMARY_FILE",
    "EvaluationResult",
    "Metric",
    "evaluate_generations",
    "metric_directions",
    "read_evaluation",
    "read_replicates",
    "summary",
    "write_evaluation",
]
