"""Run the core benchmarks one after another, keep their figures, and redraw the plot.

    .venv/bin/python benchmarks/run_all.py [--out benchmarks/results]

Runs ``polling.py``, ``cap_discovery.py``, ``downloads.py``, ``regimes.py`` and
``pipeline.py`` with their defaults (about ten minutes in all on a 2-core machine), each
in its own process, writing
``OUT/{name}.json`` and echoing the tables; then ``plot.py`` draws
``docs/img/polls_vs_lag.svg`` from ``OUT/polling.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("polling", "cap_discovery", "downloads", "regimes", "pipeline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        start = time.perf_counter()
        command = [
            sys.executable,
            str(HERE / f"{name}.py"),
            "--json",
            str(args.out / f"{name}.json"),
        ]
        subprocess.run(command, check=True)  # noqa: S603 - our own scripts, our interpreter
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    plot = [sys.executable, str(HERE / "plot.py"), str(args.out / "polling.json")]
    subprocess.run(plot, check=True)  # noqa: S603 - our own script


if __name__ == "__main__":
    main()
