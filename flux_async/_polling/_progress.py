"""Learn how far to trust the ``progress`` a Pending reply reports, per provider and model.

A reading ``p`` (0..1) at ``t`` seconds after submit predicts the task's total time as
``t / p``. How good that prediction is depends on the server: BFL's progress may be
absent, coarse, or count queueing; the simulator's is exact up to two decimals. The
model of the prediction's error is::

    log T - log(t / p)  ~  Normal(0, (s * (1 - p))**2 + (q / p)**2)

``s`` is the error of the unfinished part relative to the whole (learned per key), and
``q`` the rounding of the reading (a uniform error of half the ``resolution``, so
``q = resolution / sqrt(12)``), which makes an early, small reading worth little.

:meth:`ProgressModel.observe` grades a task's first reading once the task is seen done:
it finished somewhere in ``(censored_at, duration]``, which has probability
``P(s) = Phi(hi(s)) - Phi(lo(s))`` under the model above for each candidate ``s``. The
log-likelihoods of a fixed grid of candidates are summed with old data decaying by
``1 - 1/window`` per observation, plus a weak log-normal prior around ``prior_sigma``;
the estimate is the best candidate. A likelihood rather than a moment estimate, because
the evidence is mostly wide intervals that *contain* the prediction: each says little,
but a handful already rules out a large ``s``, while one interval that misses a sharp
prediction at once rules out a small one (its probability is floored at ``outlier``, so a
single odd task cannot undo many good ones). :meth:`trusted` says whether a key's
readings have proved good enough to aim polls at.

Pure arithmetic; seconds are floats; nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_PROGRESS", "ProgressModel", "progress_estimate"]

MIN_PROGRESS = 0.02
"""Readings below this carry almost no information and mostly rounding noise."""

# (1 - p) is floored here, so a reading of 1.0 (done but not yet reported) stays finite.
_MIN_REMAINING = 0.05


def progress_estimate(elapsed: float, progress: float | None) -> float | None:
    """Return the total seconds a reading ``progress`` at ``elapsed`` predicts, if any."""
    if progress is None or not math.isfinite(progress) or progress < MIN_PROGRESS:
        return None
    if elapsed <= 0.0:
        return None
    return elapsed / min(progress, 1.0)


@dataclass(slots=True)
class _KeyState:
    loglik: list[float]  # decayed log-likelihood per grid candidate
    count: int = 0
    best: int = -1  # index of the current estimate


class ProgressModel:
    """Per-key scale ``s`` of the log-error of progress-based total-time predictions.

    ``prior_sigma`` is ``s`` for a key never graded (0.5: a reading at one half is taken
    to be good to about 25%); ``prior_weight`` is the strength of the log-normal prior
    on ``s`` (log-sd 1) in observations. ``resolution`` is the step of the reported
    progress (BFL and the simulator: 0.01). A key is :meth:`trusted` after ``min_count``
    graded readings.
    """

    def __init__(
        self,
        *,
        prior_sigma: float = 0.5,
        prior_weight: float = 1.0,
        window: float = 50.0,
        resolution: float = 0.01,
        min_sigma: float = 0.01,
        max_sigma: float = 2.0,
        min_count: int = 3,
        outlier: float = 1e-3,
        grid: int = 40,
    ) -> None:
        if not 0.0 < min_sigma <= prior_sigma <= max_sigma:
            raise ValueError("need 0 < min_sigma <= prior_sigma <= max_sigma")
        if prior_weight < 0.0 or window < 1.0 or resolution < 0.0 or min_count < 0:
            raise ValueError("need prior_weight >= 0, window >= 1, resolution >= 0, min_count >= 0")
        if not 0.0 < outlier < 1.0 or grid < 2:
            raise ValueError("need 0 < outlier < 1 and grid >= 2")
        self.prior_sigma = prior_sigma
        self._keep = 1.0 - 1.0 / window
        self._rounding = resolution / math.sqrt(12.0)
        self._min_count = min_count
        self._log_outlier = math.log(outlier)
        step = math.log(max_sigma / min_sigma) / (grid - 1)
        self._grid = [min_sigma * math.exp(i * step) for i in range(grid)]
        centre = math.log(prior_sigma)
        self._prior = [-0.5 * prior_weight * (math.log(g) - centre) ** 2 for g in self._grid]
        self._keys: dict[str, _KeyState] = {}

    def sigma(self, key: str) -> float:
        """Return the estimated ``s`` of ``key`` (the prior until a reading is graded)."""
        state = self._keys.get(key)
        if state is None or state.best < 0:
            return self.prior_sigma
        return self._grid[state.best]

    def error(self, key: str, progress: float) -> float:
        """Return the log-sd of the total-time prediction from a reading ``progress``."""
        return self._spread(self.sigma(key), min(max(progress, MIN_PROGRESS), 1.0))

    def _spread(self, s: float, progress: float) -> float:
        return math.hypot(s * max(1.0 - progress, _MIN_REMAINING), self._rounding / progress)

    def trusted(self, key: str, threshold: float) -> bool:
        """Return whether ``key``'s readings have proved accurate: ``s <= threshold``."""
        state = self._keys.get(key)
        if state is None or state.count < self._min_count:
            return False
        return self.sigma(key) <= threshold

    def count(self, key: str) -> int:
        """Return how many readings of ``key`` have been graded."""
        state = self._keys.get(key)
        return 0 if state is None else state.count

    def observe(
        self,
        key: str,
        predicted: float,
        progress: float,
        duration: float,
        *,
        censored_at: float | None = None,
    ) -> None:
        """Grade a reading ``progress`` that predicted a total of ``predicted`` seconds.

        The task was seen done ``duration`` s after submit and last seen pending at
        ``censored_at`` (None: ``duration`` is exact, graded as the last millisecond).
        """
        if predicted <= 0.0 or duration <= 0.0 or not MIN_PROGRESS <= progress <= 1.0:
            return
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState([0.0] * len(self._grid))
        low = duration - 1e-3 if censored_at is None else censored_at
        high = math.log(duration) - math.log(predicted)
        low_z = math.log(low) - math.log(predicted) if low > 0.0 else -math.inf
        for i, s in enumerate(self._grid):
            spread = self._spread(s, progress)
            mass = _normal_cdf(high / spread) - _normal_cdf(low_z / spread)
            gain = math.log(mass) if mass > 0.0 else self._log_outlier
            state.loglik[i] = self._keep * state.loglik[i] + max(gain, self._log_outlier)
        state.count += 1
        scores = [ll + prior for ll, prior in zip(state.loglik, self._prior, strict=True)]
        state.best = max(range(len(scores)), key=scores.__getitem__)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{key}: s={self.sigma(key):.3g} n={s.count}" for key, s in self._keys.items()
        )
        return f"ProgressModel({parts})"


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))
