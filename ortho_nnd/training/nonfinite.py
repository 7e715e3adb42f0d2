"""Guard against non-finite losses and gradients: skip the step, log the cases, stop when it persists.

``NonFiniteGuard(max_consecutive)``: call ``check(iteration, value, case_ids, quantity)`` with a
value that all ranks agree on (for example after an all-reduce). It returns True when the value
is finite and resets the counter. Otherwise it logs a warning with the iteration, the value and
the case ids, counts the skip, and raises ``NonFiniteLossError`` once ``max_consecutive`` steps
in a row were skipped. ``reset()`` clears the counter after a completed step, for callers that
check several values per step and only pass the non-finite ones.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

logger = logging.getLogger(__name__)

# Consecutive skipped steps after which training stops: one bad case can recur a few times by
# chance, but ten in a row means the weights or the data are broken.
DEFAULT_MAX_CONSECUTIVE_NONFINITE = 10


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


class NonFiniteGuard:
    def __init__(self, max_consecutive: int = DEFAULT_MAX_CONSECUTIVE_NONFINITE) -> None:
        if max_consecutive < 1:
            raise ValueError(f"Invalid max_consecutive={max_consecutive}: must be at least 1.")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_skipped = 0

    def reset(self) -> None:
        self.consecutive = 0

    def check(self, iteration: int, value: float, case_ids: Sequence[str], quantity: str = "loss") -> bool:
        """Return True when ``value`` is finite; log and count a skipped step otherwise."""
        if math.isfinite(value):
            self.consecutive = 0
            return True

        self.consecutive += 1
        self.total_skipped += 1
        logger.warning(
            "Iteration %d: %s is %s for cases %s; step skipped (%d in a row, %d in total).",
            iteration, quantity, value, list(case_ids), self.consecutive, self.total_skipped,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{quantity} was not finite for {self.consecutive} consecutive iterations (last: iteration {iteration}, "
                f"cases {list(case_ids)}). Check these cases for NaN/Inf values, or lower the learning rate."
            )
        return False
