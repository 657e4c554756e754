"""Learning-rate schedule shared by both halves, so that they step in lockstep."""

from __future__ import annotations

from typing import Sequence


def learning_rate(base_lr: float, milestones: Sequence[int], gamma: float, epoch: int) -> float:
    """Return the learning rate for a 1-based epoch.

    Equivalent to torch's MultiStepLR stepped once after each epoch: the rate is multiplied by
    gamma after every milestone epoch that has finished.
    """
    passed = sum(1 for milestone in milestones if milestone < epoch)
    return base_lr * gamma**passed
