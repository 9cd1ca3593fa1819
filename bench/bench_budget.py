"""Recovery from another program's burst on the same key, beside the counter's own drain time.

    python bench/bench_budget.py                      # starter's counter (max 15, 0.33/s): ~6 min
    python bench/bench_budget.py --decay 1 --rounds 3 # a faster counter: ~1.5 min

Each round: a fresh fake exchange keeping Kraken's counter and penalty rule (a refused call still
counts); krakenex makes a burst of calls with the key (25 by default: 10 over starter's maximum,
which the exchange refuses and counts); then the collector starts on the same key with a Ledgers
backfill (cost 2 a page) and three Balance jobs every 0.05 s (more than the key allows). Per round:

* **first success**: seconds from the collector's start to its first accepted private call, beside
  the **drain**: the counter's level after the burst over its decay (the time it takes to empty;
  the issue's target is "within one drain plus a few seconds"), and the time until it is under its
  maximum by one call (the earliest a call could have been accepted);
* **refusals**: the collector's calls refused after its start (target: a handful);
* **served**: accepted cost units per second over the 20 s after the first success, as a share of
  the counter's decay (target >= 80%).

Medians over the rounds, with min-max.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import krakenex  # noqa: E402

from collector.events import RunFinished  # noqa: E402
from collector.jobfile import load  # noqa: E402
from collector.ratelimit import RateLimit  # noqa: E402
from collector.service import Service  # noqa: E402
from collector.testing.fake_exchange import FakeKraken  # noqa: E402

logging.basicConfig(level=logging.ERROR)
REFUSED = "EAPI:Rate limit exceeded"
PRIVATE = frozenset({"Balance", "Ledgers"})  # the job file's methods


def one_round(workdir: Path, limit: RateLimit, burst: int, window: float) -> dict[str, float]:
    with FakeKraken(tier=limit, history={"ledger": 500}) as fake:
        key, secret = fake.add_key()
        other = krakenex.API(key, secret)
        other.uri = fake.url
        for _ in range(burst):
            other.query_private("Balance")
            time.sleep(0.002)  # krakenex's nonce is the millisecond
        level = fake.counter_level(key)
        before = fake.errors[REFUSED]
        path = workdir / "budget.yaml"
        path.write_text(
            f"database: sqlite:///{workdir / 'budget.db'}\nkraken:\n  url: {fake.url}\n"
            f"  key: {key}\n  secret: {secret}\n"
            f"  rate_limit: {{max: {limit.max:g}, decay: {limit.decay:g}}}\njobs:\n"
            "  ledger: {method: Ledgers, every: 1h}\n"
            + "".join(f"  b{i}: {{method: Balance, every: 0.05s}}\n" for i in range(3))
        )
        os.environ["COLLECTOR_STATE_DIR"] = str(workdir / "state")
        service = Service(load(path))
        first: list[float] = []
        # The key's calls only: the service's own reference jobs (Assets, AssetPairs) are public.
        service.events.subscribe(
            RunFinished,
            lambda e: (
                first.append(time.monotonic())
                if e.record.status == "ok" and e.record.method in PRIVATE
                else None
            ),
        )
        started = time.monotonic()
        service.start()
        try:
            while not first:
                time.sleep(0.01)
            success = first[0] - started
            served_from = fake.spent[key]
            time.sleep(window)  # the measurement's window, not a synchronisation
            served = (fake.spent[key] - served_from) / window
        finally:
            service.stop()
        refused = fake.errors[REFUSED] - before
    return {
        "level": level,
        "drain": level / limit.decay,
        "earliest": max(0.0, (level + 1 - limit.max) / limit.decay),
        "first": success,
        "refused": refused,
        "served": served / limit.decay,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=float, default=15)
    parser.add_argument("--decay", type=float, default=0.33)
    parser.add_argument("--burst", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    limit = RateLimit(args.max, args.decay)
    results = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            result = one_round(Path(tmp), limit, args.burst, args.window)
        results.append(result)
        print(
            f"round {i + 1}: counter {result['level']:.1f} after the burst; first success "
            f"{result['first']:.1f} s (drain {result['drain']:.1f} s, earliest "
            f"{result['earliest']:.1f} s); {result['refused']:.0f} refused; served "
            f"{result['served']:.0%} of the decay",
            flush=True,
        )

    def line(name: str, fmt: str) -> str:
        values = [r[name] for r in results]
        return (
            f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})"
        )

    print(
        f"\ncounter max {args.max:g}, decay {args.decay:g}/s, a burst of {args.burst} calls; "
        f"medians of {args.rounds} rounds (min-max):"
    )
    print(f"  first private success  {line('first', '.1f')} s")
    print(f"  the counter's drain    {line('drain', '.1f')} s (level / decay)")
    print(f"  earliest possible      {line('earliest', '.1f')} s (under the maximum by one call)")
    print(f"  refused after start    {line('refused', '.0f')}")
    print(f"  served once drained    {line('served', '.0%')} of the decay rate")


if __name__ == "__main__":
    main()
