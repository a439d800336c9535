"""LoSA's two schedules over the T progressive stages t = 1..T."""

from __future__ import annotations


def cubic_sparsity(t: int, T: int, target: float) -> float:
    """Zhu & Gupta (2017) cubic schedule from 0 to `target`: s_t = s·(1 − (1 − t/T)³).

    Steep at first, flat at the end: most weights go while the model is still close to dense,
    the last stages remove few and leave the fine-tuning time to recover.
    """
    if not 0 <= t <= T:
        raise ValueError(f"stage {t} outside 0..{T}")
    return target * (1.0 - (1.0 - t / T) ** 3)


def stage_mean_rank(t: int, T: int, rank: float) -> float:
    """LoSA Eq. 9: the average LoRA rank grows by one per stage as sparsity (and the reconstruction
    error) grows, centred so that its mean over the T stages is `rank` (r̄ = 8, T = 5: 6, 7, 8, 9, 10,
    the values the authors' code uses)."""
    return rank + t - (T + 1) / 2
