"""Draw polls per task against mean detection lag: the measured clients and the trade-off curves.

    .venv/bin/python benchmarks/plot.py benchmarks/results/polling.json [--out FILE.svg]

Points: each client's figures from a ``polling.py --json`` run (loopback simulator). Curves,
computed offline with ``simulate_schedule`` on 1000 lognormal(median 3 s, sigma 0.5) times
with the distribution known: a fixed interval swept from 0.25 s to 2 s; the hazard-shaped
schedule with its rate swept; the same with a two-decimal linear progress, once learned.
A hand-written SVG (no plotting library); ``--out`` defaults to
``docs/img/polls_vs_lag.svg``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from flux_async._hazard import HazardPolicy
from flux_async._latency import LatencyModel
from flux_async._policy import FixedIntervalPolicy, PollPolicy, simulate_schedule

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
    legend_y += 10
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
