"""Draw polls per task against mean detection lag: the measured clients and the trade-off curves.

    .venv/bin/python benchmarks/plot.py benchmarks/results/polling.json [--out FILE.svg]

Points: each client's figures from a ``polling.py --json`` run (loopback simulator). Curves,
computed offline with ``simulate_schedule`` on 1000 lognormal(median 3 s, sigma 0.5) times
with the distribution known: a fixed interval swept from 0.25 s to 2 s; the hazard-shaped
schedule with its rate swept; the same with a two-decimal linear progress, once learned;
and one curve per polling regime (``_regime``: one task's schedule alone, no budget, its rate swept,
without progress), each with a ring on the rate the client uses in that regime.
A hand-written SVG (no plotting library); ``--out`` defaults to
``docs/img/polls_vs_lag.svg``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from flux_async._polling._hazard import HazardPolicy
from flux_async._polling._latency import LatencyModel
from flux_async._polling._policy import FixedIntervalPolicy, PollPolicy, simulate_schedule
from flux_async._polling._regime import FRUGAL, THROUGHPUT, RegimePolicy, RegimeSettings

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 900, 470
LEFT, RIGHT, TOP, BOTTOM = 70, 330, 30, 60
X_MAX, Y_MAX = 8.0, 1.6
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def known() -> LatencyModel:
    return LatencyModel(lambda _key: (3.0, 0.5), prior_weight=1e12, window=1e12)


def curve(make: Sequence[PollPolicy], progress: bool) -> list[tuple[float, float]]:
    rng = random.Random(7)
    times = [rng.lognormvariate(math.log(3.0), 0.5) for _ in range(1000)]

    def linear(elapsed: float, total: float) -> float:
        return round(min(elapsed / total, 1.0), 2)

    points = []
    for policy in make:
        stats = simulate_schedule(policy, times, progress=linear if progress else None)
        points.append((stats.polls_per_task, stats.mean_lag))
    return points


def fixed_prior(median: float, sigma: float) -> Callable[[str], tuple[float, float]]:
    return lambda _key: (median, sigma)


def regime_curve(
    mode: str, chosen: RegimeSettings, mix: Sequence[tuple[float, float]]
) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """Return one regime's offline curve (its rate swept) on its workload's ``mix`` of
    lognormal (median, sigma) models, equally weighted, and the point of its own rate.
    """
    swept = sorted({0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.0, chosen.rate})
    points = []
    for rate in swept:
        settings = RegimeSettings(rate, chosen.first_mass)
        polls = lag = 0.0
        for median, sigma in mix:
            rng = random.Random(7)
            times = [rng.lognormvariate(math.log(median), sigma) for _ in range(1000)]
            model = LatencyModel(fixed_prior(median, sigma), prior_weight=1e12, window=1e12)
            policy = RegimePolicy(model, mode=mode, throughput=settings, frugal=settings)  # type: ignore[arg-type]
            stats = simulate_schedule(policy, times)
            polls += stats.polls_per_task / len(mix)
            lag += stats.mean_lag / len(mix)
        points.append((polls, lag))
    return points, points[swept.index(chosen.rate)]


def x_of(polls: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * min(polls, X_MAX) / X_MAX


def y_of(lag: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * min(lag, Y_MAX) / Y_MAX


def svg(rows: list[tuple[str, dict[str, float]]], title: str) -> str:
    fixed = curve([FixedIntervalPolicy(i) for i in (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)], False)
    rates = (0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.2, 4.0)
    hazard = curve([HazardPolicy(known(), rate=r) for r in rates], False)
    informed = curve(
        [HazardPolicy(known(), rate=r, informed_rate=r) for r in rates[:-2]],
        True,
    )
    regimes = {
        "throughput": regime_curve("throughput", THROUGHPUT, [(3.0, 0.5)]),
        "frugal": regime_curve("frugal", FRUGAL, [(1.0, 0.4), (6.0, 0.4)]),
    }
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{title}</text>',
    ]
    x0, y0, x1, y1 = x_of(0), y_of(0), x_of(X_MAX), y_of(Y_MAX)
    for i in range(9):
        x = x_of(float(i))
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{i}</text>')
    for i in range(9):
        lag = 0.2 * i
        y = y_of(lag)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end">{lag:.1f}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
    out.append(
        f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 18}" text-anchor="middle">polls per task</text>'
    )
    out.append(
        f'<text transform="translate(18 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">'
        "mean detection lag (s)</text>"
    )
    legend_y = TOP + 10
    for label, points, colour, dash in (
        ("fixed interval (offline)", fixed, "#999", "4 3"),
        ("hazard, rate swept (offline)", hazard, "#555", ""),
        ("hazard + learned progress (offline)", informed, "#2ca02c", "2 2"),
        ("throughput regime, alone (offline)", regimes["throughput"][0], "#d62728", "6 2"),
        ("frugal regime, klein 1 s / max 6 s mix", regimes["frugal"][0], "#1f77b4", "6 2"),
    ):
        path = " ".join(f"{x_of(p):.1f},{y_of(lag):.1f}" for p, lag in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5" '
            f'stroke-dasharray="{dash}"/>'
        )
        lx = WIDTH - RIGHT + 15
        out.append(
            f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 24}" y2="{legend_y}" stroke="{colour}" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
        )
        out.append(f'<text x="{lx + 30}" y="{legend_y + 4}">{label}</text>')
        legend_y += 18
    for mode, colour in (("throughput", "#d62728"), ("frugal", "#1f77b4")):
        polls, lag = regimes[mode][1]
        out.append(
            f'<circle cx="{x_of(polls):.1f}" cy="{y_of(lag):.1f}" r="7" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
    lx = WIDTH - RIGHT + 27
    out.append(
        f'<circle cx="{lx}" cy="{legend_y}" r="7" fill="none" stroke="#555" stroke-width="2"/>'
    )
    out.append(f'<text x="{lx + 18}" y="{legend_y + 4}">the rate each regime uses</text>')
    legend_y += 28
    out.append(f'<text x="{WIDTH - RIGHT + 15}" y="{legend_y + 4}">measured on loopback:</text>')
    legend_y += 18
    for (name, figures), colour in zip(rows, COLOURS, strict=False):
        x, y = x_of(figures["polls"]), y_of(figures["lag_mean"])
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        lx = WIDTH - RIGHT + 27
        out.append(f'<circle cx="{lx}" cy="{legend_y}" r="5" fill="{colour}"/>')
        out.append(f'<text x="{lx + 18}" y="{legend_y + 4}">{name}</text>')
        legend_y += 18
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("polling_json", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "polls_vs_lag.svg")
    args = parser.parse_args()
    data = json.loads(args.polling_json.read_text())
    rows = [(name, figures) for name, figures in data["rows"]]
    title = (
        f"Polls per task vs mean detection lag: N={data['n']}, cap {data['cap']}, "
        "lognormal(median 3 s, sigma 0.5)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(rows, title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
