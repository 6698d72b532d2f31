"""Generation-quality evaluation: FID/KID, FD/KD in IEL feature spaces, CLIP scores, per scene.

:func:`evaluate_generations` is the entry point (``dldc evaluate`` and the benchmarks call it).
"""

from dldc.evaluate.evaluate import EvaluationResult, evaluate_generations, higher_is_better, read_evaluation

__all__ = ["EvaluationResult", "evaluate_generations", "higher_is_better", "read_evaluation"]
