"""A discrete-event model of a capped batch: a policy's makespan with no loop or HTTP cost.

    .venv/bin/python benchmarks/batch_model.py [--n 240] [--cap 24] [--rtt 0.004] [--seeds 4]

Runs the default policy (learning from the catalog prior of flux-dev, 4 s) over N tasks
with lognormal(median 3 s, sigma 0.5) durations, ``cap`` in flight, FIFO: a slot is
handed on when a poll sees its task done, one round trip after the poll is sent. Prints
makespan / ideal FIFO, polls per task and mean lag, with and without a two-decimal
linear ``progress``: the floor the live benchmark (``polling.py``) approaches.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import statistics
from collections.abc import Sequence

from _harness import ideal_fifo, lognormal_durations

from flux_async._polling._hazard import default_policy
from flux_async._polling._policy import PollPolicy, PollState

KEY = "bfl:flux-dev"


def run(
    policy: PollPolicy, durations: Sequence[float], cap: int, rtt: float, progress: bool
) -> tuple[float, float, float]:
    """Return (makespan, polls per task, mean lag) of one batch."""
    seq = itertools.count()
    events: list[tuple[float, int, int]] = []
    tasks: dict[int, tuple[float, float, PollState]] = {}
    submitted = polls = 0
    lags: list[float] = []
    last = 0.0

    def submit(now: float) -> None:
        nonlocal submitted
        index, submitted = submitted, submitted + 1
        start = now + rtt / 2
        state = PollState(KEY, now)
        tasks[index] = (start, start + durations[index], state)
        heapq.heappush(events, (now + policy.first_delay(state, now), next(seq), index))

    while submitted < min(cap, len(durations)):
        submit(0.0)
    while events:
        sent, _, index = heapq.heappop(events)
        start, end, state = tasks[index]
        polls += 1
        seen, reply = sent + rtt / 2, sent + rtt
        if seen >= end:
            lags.append(reply - end)
            last = max(last, reply)
            previous = state.last_poll_at
            censored = 0.0 if previous is None else previous - state.submitted_at
            policy.observe_completion(
                KEY, reply - state.submitted_at, censored_at=censored, state=state
            )
            if submitted < len(durations):
                submit(reply)
            continue
        reading = round(min((seen - start) / (end - start), 1.0), 2) if progress else None
        delay = policy.next_delay(state, reply, progress=reading)
        heapq.heappush(events, (reply + delay, next(seq), index))
    return last, polls / len(durations), statistics.fmean(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--rtt", type=float, default=0.004, help="round trip, seconds")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    for progress in (True, False):
        figures = []
        for seed in range(1, args.seeds + 1):
            durations = lognormal_durations(args.n, seed)
            makespan, polls, lag = run(default_policy(), durations, args.cap, args.rtt, progress)
            figures.append((makespan / ideal_fifo(durations, args.cap), polls, lag))
        ratio, polls, lag = (statistics.fmean(f[i] for f in figures) for i in range(3))
        print(
            f"progress {'on ' if progress else 'off'}: makespan / ideal {ratio:.3f}, "
            f"{polls:.2f} polls per task, mean lag {lag:.3f} s (mean of {args.seeds} seeds)"
        )


if __name__ == "__main__":
    main()
