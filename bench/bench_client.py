"""collector.API beside krakenex.API, on the same strict fake, in the same run.

    python bench/bench_client.py            # ~1 minute
    python bench/bench_client.py --quick    # fewer rounds
    python bench/bench_client.py --before CHECKOUT   # and the client of another commit

1. Single-threaded calls per second, public (Time) and private (Balance), no rate limit at the fake.
   Rounds alternate between the clients (bench/rounds.py, the order reversing each round); the
   ratio is the median of the rounds' own ratios, with their min-max.
2. 32 threads x 50 private calls through one shared client, with a tier counter on at the fake
   (Kraken's pro shape, max 20, decay sped up 100x to 100/s so the run takes seconds, not hours).
   collector.API runs with the same limit on; krakenex has no limiter. Counted: the calls that
   succeeded, and those refused for a bad nonce or the rate limit.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import krakenex

import collector
from collector.ratelimit import RateLimit
from collector.testing.fake_exchange import FakeKraken

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import ROUNDS, alternate, ratio, spread

logging.getLogger("urllib3").setLevel(logging.ERROR)  # krakenex's pool overflows at 32 threads


#: ``--before CHECKOUT``: the client of another commit, loaded as the package ``collector_before``
BEFORE: list[type] = []


def load_before(tree: Path) -> type:
    """``collector.API`` of the checkout ``tree`` (the commit before a change), imported beside
    this tree's as the package ``collector_before`` (its imports are relative)."""
    spec = importlib.util.spec_from_file_location(
        "collector_before",
        tree / "collector" / "__init__.py",
        submodule_search_locations=[str(tree / "collector")],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["collector_before"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("collector_before.client").API


def make(kind: str, fake: FakeKraken, key: str, secret: str, **kw):
    if kind == "collector":
        api = collector.API(key, secret, **kw)
    elif kind == "before":
        api = BEFORE[0](key, secret, **kw)
    else:
        api = krakenex.API(key, secret)
    api.uri = fake.url
    return api


def single_thread(
    rounds: int, calls: int
) -> tuple[dict[str, dict[str, list[float]]], Counter[str]]:
    """``{scope: {client: [calls/s a round]}}`` and the calls each client saw fail."""
    rates: dict[str, dict[str, list[float]]] = {}
    failed: Counter[str] = Counter()
    with FakeKraken(tier=None) as fake:
        # One key each: two clients on one key would fight over its nonce (Kraken: one key per
        # process).
        kinds = ("krakenex", "collector", *(("before",) if BEFORE else ()))
        clients = {k: make(k, fake, *fake.add_key()) for k in kinds}
        for scope, call in (
            ("public", lambda a: a.query_public("Time")),
            ("private", lambda a: a.query_private("Balance")),
        ):
            for api in clients.values():
                call(api)  # warm the connection

            def side(name: str, call=call) -> float:  # type: ignore[no-untyped-def]
                api = clients[name]
                start = time.perf_counter()
                for _ in range(calls):
                    # krakenex's ms nonce repeats when one thread makes >1 call per ms
                    failed[name] += bool(call(api)["error"])
                return calls / (time.perf_counter() - start)

            print(f"  {scope}: {rounds} rounds of {calls} calls (calls/s)")
            rates[scope] = alternate({n: lambda n=n: side(n) for n in clients}, rounds)
    return rates, failed


def contended(kind: str, threads: int, per_thread: int, limit: RateLimit) -> dict[str, object]:
    with FakeKraken(tier=limit) as fake:
        key, secret = fake.add_key()
        api = make(
            kind, fake, key, secret, **({"rate_limit": limit} if kind == "collector" else {})
        )
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def work() -> None:
            barrier.wait()
            for _ in range(per_thread):
                try:
                    errors = api.query_private("Balance")["error"]
                    result = errors[0] if errors else "ok"
                except Exception as exc:  # krakenex may raise; count, don't stop
                    result = type(exc).__name__
                with lock:
                    outcomes[result] += 1

        pool = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - start
        return {
            "ok": outcomes["ok"],
            "nonce": outcomes["EAPI:Invalid nonce"],
            "rate": outcomes["EAPI:Rate limit exceeded"],
            "other": sum(
                v
                for k, v in outcomes.items()
                if k not in ("ok", "EAPI:Invalid nonce", "EAPI:Rate limit exceeded")
            ),
            "seconds": elapsed,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--before", type=Path, help="also the client of this checkout (the commit before a change)"
    )
    args = parser.parse_args()
    rounds, calls = (ROUNDS, 300) if args.quick else (7, 1000)
    if args.before is not None:
        BEFORE.append(load_before(args.before.resolve()))
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")

    print(f"single-threaded calls/s against the fake, {rounds} rounds x {calls} calls")
    rates, failed = single_thread(rounds, calls)
    print(f"{'':10}{'krakenex':>24}{'collector':>24}  ratio: median (min-max)")
    for scope, sides in rates.items():
        k, c = sides["krakenex"], sides["collector"]
        print(f"{scope:10}{spread(k):>24}{spread(c):>24}  {ratio(c, k)}")
        if "before" in sides:
            b = sides["before"]
            print(f"{'':10}before {spread(b)}: {ratio(b, k)} krakenex; now/before {ratio(c, b)}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    total = rounds * calls * 2
    print(
        f"calls answered with an error: krakenex {failed['krakenex']}/{total}, "
        f"collector {failed['collector']}/{total}"
    )

    limit = RateLimit(max=20, decay=100)
    print("\n32 threads x 50 private calls, one shared client, fake counter max 20 decay 100/s")
    print(f"{'':10}{'ok':>6}{'bad nonce':>11}{'rate limit':>12}{'other':>7}{'seconds':>9}")
    for kind in ("krakenex", "collector"):
        r = contended(kind, 32, 50, limit)
        print(f"{kind:10}{r['ok']:6}{r['nonce']:11}{r['rate']:12}{r['other']:7}{r['seconds']:9.1f}")


if __name__ == "__main__":
    main()
