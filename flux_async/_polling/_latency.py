"""Learn how long tasks take: a lognormal completion-time model per provider and model.

Generation times are right-skewed and strictly positive, so each latency key
(``f"{provider}:{model}"``) is modelled as a lognormal: ``log T ~ Normal(mu, sigma)``.
The estimate starts from the catalog's prior ``(median, sigma)``, weighted as
``prior_weight`` pseudo-observations, so the first few completions already move it. Each
observation then updates an exponentially forgetting mean and variance of ``log T``
(the weight of old data decays by ``1 - 1/window`` per observation, so about the last
``window`` completions count): the model follows a change in load. Residuals are
clipped at ``clip`` standard deviations (never tighter than ``min_clip`` in log units,
so a model that has become very narrow can still follow a real shift) to keep one
stuck task from dragging the estimate. Memory is constant per key.

Detection is interval-censored: a task seen done at ``duration`` was still pending at
``censored_at``, so it really finished somewhere in ``(censored_at, duration]``. Rather
than the midpoint, :meth:`LatencyModel.observe` adds the *conditional* mean and variance
of ``log T`` given that interval under the current model (one online EM step). That
removes the detection-lag bias (the midpoint still leans on the polling schedule's
spacing) and never places the observation outside the interval.

Everything is pure arithmetic on floats (stdlib ``math`` only); seconds are floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "LatencyModel",
    "lognormal_hazard",
    "lognormal_quantile",
    "lognormal_survival",
]

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_STANDARD = NormalDist()
# Shortest duration taken seriously: a zero or negative reading is a clock artefact.
_MIN_DURATION = 1e-3


def _upper_tail(z: float) -> float:
    """Return P(Z > z) for a standard normal Z, accurate far into both tails."""
    return 0.5 * math.erfc(z / _SQRT2)


def _pdf(z: float) -> float:
    return math.exp(-0.5 * z * z - _LOG_SQRT_2PI)


def _mills_inverse(z: float) -> float:
    """Return phi(z) / Q(z), the standard normal hazard, without underflow for large z."""
    if z < 25.0:
        tail = _upper_tail(z)
        return _pdf(z) / tail if tail > 0.0 else z
    # Both phi and Q underflow near z = 38; the asymptotic series is exact to 1e-11 here.
    inv2 = 1.0 / (z * z)
    return z / (1.0 - inv2 * (1.0 - 3.0 * inv2 * (1.0 - 5.0 * inv2)))


def lognormal_survival(t: float, mu: float, sigma: float) -> float:
    """Return P(T > t) for a lognormal T with log-mean ``mu`` and log-sd ``sigma``."""
    if t <= 0.0:
        return 1.0
    return _upper_tail((math.log(t) - mu) / sigma)


def lognormal_hazard(t: float, mu: float, sigma: float) -> float:
    """Return the hazard rate f(t)/S(t) in 1/seconds at ``t`` seconds (0 for t <= 0)."""
    if t <= 0.0:
        return 0.0
    z = (math.log(t) - mu) / sigma
    if z < -38.0:
        return 0.0
    return _mills_inverse(z) / (sigma * t)


def lognormal_quantile(q: float, mu: float, sigma: float) -> float:
    """Return the ``q`` quantile in seconds (0 < q < 1)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q!r}")
    return math.exp(mu + sigma * _STANDARD.inv_cdf(q))


def _truncated_log_moments(
    low: float | None, high: float, mu: float, sigma: float
) -> tuple[float, float]:
    """Return mean and variance of ``log T`` given ``low < T <= high`` under the model."""
    b_log = math.log(max(high, _MIN_DURATION))
    a_log = math.log(low) if low is not None and low > 0.0 else -math.inf
    if a_log >= b_log:
        return b_log, 0.0
    alpha = (a_log - mu) / sigma
    beta = (b_log - mu) / sigma
    # Subtract tail probabilities on the side where they are small, to avoid cancellation.
    if alpha > 0.0:
        mass = _upper_tail(alpha) - _upper_tail(beta)
    else:
        mass = _upper_tail(-beta) - _upper_tail(-alpha)
    pdf_a = 0.0 if alpha == -math.inf else _pdf(alpha)
    pdf_b = _pdf(beta)
    if mass < 1e-12:
        # Far in a tail the model has no say; fall back to the interval itself.
        if a_log == -math.inf:
            return b_log, 0.0
        return 0.5 * (a_log + b_log), (b_log - a_log) ** 2 / 12.0
    ratio = (pdf_a - pdf_b) / mass
    a_term = 0.0 if alpha == -math.inf else alpha * pdf_a
    variance = sigma * sigma * max(0.0, 1.0 + (a_term - beta * pdf_b) / mass - ratio * ratio)
    mean = min(max(mu + sigma * ratio, a_log), b_log)
    return mean, variance


@dataclass(slots=True)
class _KeyState:
    weight: float
    mu: float
    var: float
    count: int = 0


class LatencyModel:
    """Per-key lognormal completion-time estimates, learned online from observations.

    ``prior(key)`` returns ``(median_seconds, sigma)`` for a key seen for the first time
    (typically from the catalog's typical latency). All times are seconds after submit.
    """

    def __init__(
        self,
        prior: Callable[[str], tuple[float, float]],
        *,
        prior_weight: float = 2.0,
        window: float = 50.0,
        clip: float = 2.5,
        min_clip: float = 0.5,
        min_sigma: float = 0.05,
        max_sigma: float = 2.5,
    ) -> None:
        if prior_weight <= 0.0:
            raise ValueError("prior_weight must be > 0")
        if window < 1.0:
            raise ValueError("window must be >= 1")
        if not 0.0 < min_sigma <= max_sigma:
            raise ValueError("need 0 < min_sigma <= max_sigma")
        self._prior = prior
        self._prior_weight = prior_weight
        self._keep = 1.0 - 1.0 / window
        self._clip = clip
        self._min_clip = min_clip
        self._min_sigma = min_sigma
        self._max_sigma = max_sigma
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            median, sigma = self._prior(key)
            if median <= 0.0 or sigma <= 0.0:
                raise ValueError(f"prior for {key!r} must be positive, got {(median, sigma)}")
            sigma = min(max(sigma, self._min_sigma), self._max_sigma)
            state = _KeyState(self._prior_weight, math.log(median), sigma * sigma)
            self._keys[key] = state
        return state

    def _sigma(self, state: _KeyState) -> float:
        return min(max(math.sqrt(state.var), self._min_sigma), self._max_sigma)

    def observe(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        evidence: tuple[float, float] | None = None,
    ) -> None:
        """Record a task of ``key`` seen done ``duration`` s after submit.

        ``censored_at``, when given, is the elapsed time of the last poll that still saw
        the task pending (``0.0`` if the first poll found it done): the true completion
        lies in ``(censored_at, duration]``. Without it ``duration`` is taken as exact.
        ``evidence`` is ``(mean, sd)`` of ``log T`` for this one task from elsewhere (its
        progress readings); it narrows a wide interval to where the task really ended.
        """
        state = self._state(key)
        sigma = self._sigma(state)
        if censored_at is None:
            x, extra_var = math.log(max(duration, _MIN_DURATION)), 0.0
        else:
            mu, sd = state.mu, sigma
            if evidence is not None and evidence[1] > 0.0:
                # The posterior of this task's log T before the interval: precision-weighted.
                w_model, w_evidence = 1.0 / (sd * sd), 1.0 / (evidence[1] ** 2)
                mu = (mu * w_model + evidence[0] * w_evidence) / (w_model + w_evidence)
                sd = math.sqrt(1.0 / (w_model + w_evidence))
            x, extra_var = _truncated_log_moments(censored_at, duration, mu, sd)
        limit = max(self._clip * sigma, self._min_clip)
        residual = min(max(x - state.mu, -limit), limit)
        old = self._keep * state.weight
        weight = old + 1.0
        # Parallel-variance merge of the decayed history with one (possibly spread) point.
        state.var = (old * state.var + extra_var + old * residual * residual / weight) / weight
        state.mu += residual / weight
        state.weight = weight
        state.count += 1

    def params(self, key: str) -> tuple[float, float]:
        """Return ``(mu, sigma)`` of ``log T`` for ``key``."""
        state = self._state(key)
        return state.mu, self._sigma(state)

    def median(self, key: str) -> float:
        """Return the median completion time of ``key`` in seconds."""
        return math.exp(self._state(key).mu)

    def hazard(self, key: str, t: float) -> float:
        """Return the hazard rate (1/s) of ``key`` at ``t`` seconds after submit."""
        mu, sigma = self.params(key)
        return lognormal_hazard(t, mu, sigma)

    def survival(self, key: str, t: float) -> float:
        """Return P(not done by ``t`` seconds after submit) for ``key``."""
        mu, sigma = self.params(key)
        return lognormal_survival(t, mu, sigma)

    def quantile(self, key: str, q: float) -> float:
        """Return the ``q`` quantile of ``key``'s completion time in seconds."""
        mu, sigma = self.params(key)
        return lognormal_quantile(q, mu, sigma)

    def count(self, key: str) -> int:
        """Return how many completions of ``key`` have been observed."""
        state = self._keys.get(key)
        return 0 if state is None else state.count

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{key}: median={math.exp(s.mu):.3g}s sigma={self._sigma(s):.3g} n={s.count}"
            for key, s in self._keys.items()
        )
        return f"LatencyModel({parts})"
