"""The lognormal completion-time model: numerics, learning, censoring, robustness."""

from __future__ import annotations

import math
import random

import pytest

from flux_async._polling._latency import (
    LatencyModel,
    _truncated_log_moments,
    lognormal_hazard,
    lognormal_quantile,
    lognormal_survival,
)

MU3 = math.log(3.0)


def draws(seed: int, n: int, median: float = 3.0, sigma: float = 0.5) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.gauss(math.log(median), sigma)) for _ in range(n)]


def prior(median: float, sigma: float = 0.5) -> LatencyModel:
    return LatencyModel(lambda _key: (median, sigma))


@pytest.mark.parametrize(
    ("t", "mu", "sigma"),
    [(0.5, MU3, 0.5), (3.0, MU3, 0.5), (9.0, MU3, 0.5), (1.0, 0.0, 1.0), (40.0, 2.0, 0.3)],
)
def test_hazard_is_minus_log_survival_slope(t: float, mu: float, sigma: float) -> None:
    eps = 1e-5 * t
    slope = -(
        math.log(lognormal_survival(t + eps, mu, sigma))
        - math.log(lognormal_survival(t - eps, mu, sigma))
    ) / (2 * eps)
    assert lognormal_hazard(t, mu, sigma) == pytest.approx(slope, rel=1e-5)


@pytest.mark.parametrize("z", [20.0, 30.0, 40.0, 100.0, 1000.0])
def test_hazard_is_finite_far_in_the_tail(z: float) -> None:
    sigma = 0.5
    t = math.exp(MU3 + z * sigma)
    h = lognormal_hazard(t, MU3, sigma)
    assert math.isfinite(h)
    # Mills ratio: phi(z)/Q(z) -> z (1 + 1/z^2) for large z.
    assert h == pytest.approx(z * (1 + 1 / z**2) / (sigma * t), rel=1e-3)


@pytest.mark.parametrize(
    ("t", "hazard", "survival"),
    [(0.0, 0.0, 1.0), (-1.0, 0.0, 1.0), (1e-30, 0.0, 1.0), (3.0, None, 0.5)],
)
def test_hazard_and_survival_edges(t: float, hazard: float | None, survival: float) -> None:
    if hazard is not None:
        assert lognormal_hazard(t, MU3, 0.5) == hazard
    assert lognormal_survival(t, MU3, 0.5) == pytest.approx(survival)


def test_quantile_inverts_survival_and_rejects_bad_levels() -> None:
    for q in (0.05, 0.5, 0.95):
        t = lognormal_quantile(q, MU3, 0.5)
        assert 1 - lognormal_survival(t, MU3, 0.5) == pytest.approx(q)
    with pytest.raises(ValueError, match="quantile"):
        lognormal_quantile(1.0, MU3, 0.5)


@pytest.mark.parametrize(
    ("low", "high", "mu", "sigma"),
    [(2.0, 3.0, MU3, 0.5), (None, 2.0, MU3, 0.5), (0.0, 9.0, MU3, 0.5), (6.0, 7.0, MU3, 0.5)],
)
def test_truncated_log_moments_match_quadrature(
    low: float | None, high: float, mu: float, sigma: float
) -> None:
    a = math.log(low) if low else mu - 12 * sigma
    b = math.log(high)
    n = 20000
    xs = [a + (b - a) * (i + 0.5) / n for i in range(n)]
    ws = [math.exp(-0.5 * ((x - mu) / sigma) ** 2) for x in xs]
    total = sum(ws)
    mean = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    var = sum(w * (x - mean) ** 2 for w, x in zip(ws, xs, strict=True)) / total
    got_mean, got_var = _truncated_log_moments(low, high, mu, sigma)
    assert got_mean == pytest.approx(mean, abs=1e-4)
    assert got_var == pytest.approx(var, rel=1e-3, abs=1e-6)


def test_truncated_log_moments_far_in_the_tail_fall_back_to_the_interval() -> None:
    mean, var = _truncated_log_moments(1e6, 2e6, MU3, 0.5)
    assert math.log(1e6) < mean < math.log(2e6)
    assert var == pytest.approx(math.log(2.0) ** 2 / 12)


def test_a_fresh_key_reports_its_prior() -> None:
    model = LatencyModel(lambda key: (3.0, 0.5) if key.endswith("pro") else (12.0, 0.7))
    assert model.median("bfl:flux-2-pro") == pytest.approx(3.0)
    assert model.params("bfl:flux-2-max") == pytest.approx((math.log(12.0), 0.7))
    assert model.quantile("bfl:flux-2-pro", 0.5) == pytest.approx(3.0)
    assert model.survival("bfl:flux-2-pro", 3.0) == pytest.approx(0.5)
    assert model.hazard("bfl:flux-2-pro", 3.0) == pytest.approx(lognormal_hazard(3.0, MU3, 0.5))
    assert model.count("bfl:flux-2-pro") == 0


@pytest.mark.parametrize(("prior_median", "prior_sigma"), [(10.0, 0.5), (1.0, 0.3), (3.0, 1.5)])
def test_adapts_within_the_first_few_completions(prior_median: float, prior_sigma: float) -> None:
    model = prior(prior_median, prior_sigma)
    for d in draws(1, 5):
        model.observe("k", d)
    assert model.count("k") == 5
    # After five completions the estimate sits closer to the data than to the prior.
    assert abs(math.log(model.median("k") / 3.0)) < 0.5 * abs(math.log(prior_median / 3.0)) + 0.15


def test_converges_to_the_observed_distribution() -> None:
    model = prior(10.0, 1.0)
    for d in draws(2, 600):
        model.observe("k", d)
    mu, sigma = model.params("k")
    assert mu == pytest.approx(MU3, abs=0.12)
    assert sigma == pytest.approx(0.5, abs=0.1)


def test_follows_a_shift_in_load() -> None:
    model = prior(3.0)
    for d in draws(3, 300):
        model.observe("k", d)
    assert model.median("k") == pytest.approx(3.0, rel=0.15)
    shifted = draws(4, 300, median=6.0)
    for d in shifted[:150]:
        model.observe("k", d)
    # About three forgetting windows later the old regime no longer counts.
    assert model.median("k") == pytest.approx(6.0, rel=0.15)


def test_one_outlier_moves_the_estimate_little() -> None:
    model = prior(3.0)
    for d in draws(5, 200):
        model.observe("k", d)
    before_mu, before_sigma = model.params("k")
    model.observe("k", 600.0)
    after_mu, after_sigma = model.params("k")
    # Unclipped, the residual log(600/3) = 5.3 would move mu by ~0.1 (window 50).
    assert after_mu - before_mu < 0.04
    assert after_sigma < before_sigma * 1.1


def test_contaminated_stream_keeps_the_median() -> None:
    def mean_error(model: LatencyModel) -> float:
        rng = random.Random(6)
        errors = []
        for i, d in enumerate(draws(106, 1000)):
            model.observe("k", 300.0 if rng.random() < 0.03 else d)
            if i >= 500:
                errors.append(abs(model.params("k")[0] - MU3))
        return sum(errors) / len(errors)

    clipped = mean_error(prior(3.0))
    unclipped = mean_error(LatencyModel(lambda _key: (3.0, 0.5), clip=1e9, min_clip=1e9))
    assert clipped < 0.08  # median within ~8% on average, 3% of tasks stuck at 100x
    assert clipped < 0.5 * unclipped


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0])
def test_interval_censoring_removes_the_detection_lag(interval: float) -> None:
    censored, naive = prior(3.0, 0.5), prior(3.0, 0.5)
    for d in draws(7, 1500):
        detected = math.ceil(d / interval) * interval
        censored.observe("k", detected, censored_at=detected - interval)
        naive.observe("k", detected)
    mu_c, sigma_c = censored.params("k")
    mu_n, _ = naive.params("k")
    assert mu_c == pytest.approx(MU3, abs=0.08)
    assert sigma_c == pytest.approx(0.5, abs=0.1)
    assert mu_n - MU3 > abs(mu_c - MU3)


def test_censored_at_zero_means_found_done_at_the_first_poll() -> None:
    model = prior(3.0)
    model.observe("k", 4.0, censored_at=0.0)
    # Somewhere in (0, 4]: the estimate moves down from the prior, not up towards 4.
    assert model.median("k") < 3.0


@pytest.mark.parametrize("duration", [0.0, -2.0])
def test_nonpositive_durations_are_tolerated(duration: float) -> None:
    model = prior(3.0)
    model.observe("k", duration)
    assert math.isfinite(model.params("k")[0])
    assert model.params("k")[1] >= 0.05


@pytest.mark.parametrize(
    ("prior_value", "kwargs"),
    [((0.0, 0.5), {}), ((3.0, 0.0), {}), ((3.0, 0.5), {"window": 0.5})],
)
def test_bad_configuration_is_refused(
    prior_value: tuple[float, float], kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError, match="must be"):
        LatencyModel(lambda _key: prior_value, **kwargs).params("k")


def test_memory_is_constant_per_key() -> None:
    model = prior(3.0)
    for d in draws(8, 5000):
        model.observe("a", d)
    model.observe("b", 3.0)
    assert model.count("a") == 5000
    assert "n=5000" in repr(model)
    assert repr(model).count("median=") == 2
