"""The ``collector`` command: a thin click layer that turns domain errors into one clear line."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import click

from .fake_exchange import FakeKraken, new_key_file
from .ratelimit import RateLimit, tier

logger = logging.getLogger(__name__)


def _rate_limit_option(value: str | None) -> RateLimit | None:
    """``starter``/``intermediate``/``pro``, ``none``, or ``MAX/DECAY`` such as ``20/1``."""
    if value is None or value.lower() == "none":
        return None
    if "/" in value:
        max_, _, decay = value.partition("/")
        try:
            return RateLimit(float(max_), float(decay))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    try:
        return tier(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collector")
def main() -> None:
    """Run scheduled Kraken REST queries and keep every answer in SQL."""


@main.command("fake-exchange")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port (0: any free port).")
@click.option(
    "--key-file",
    default="fake.key",
    show_default=True,
    help="krakenex-format key file to accept; created with a random key if missing.",
)
@click.option(
    "--tier", "tier_", default="starter", show_default=True,
    help="Private counter: starter, intermediate, pro, MAX/DECAY (e.g. 20/1) or none.",
)  # fmt: skip
@click.option("--public-limit", default="none", show_default=True,
              help="Per-IP public counter, MAX/DECAY (e.g. 5/1) or none.")  # fmt: skip
def fake_exchange(host: str, port: int, key_file: str, tier_: str, public_limit: str) -> None:
    """Serve a strict local stand-in for Kraken's REST API, to try a job file offline.

    \b
    Example:
        collector fake-exchange --port 8765 --key-file fake.key
        # then in jobs.yaml:  kraken: {url: http://127.0.0.1:8765, key_file: fake.key}
        # inject a fault:     curl -X POST 'http://127.0.0.1:8765/_fake/fault?kind=http_502'
    """
    fake = FakeKraken(
        tier=_rate_limit_option(tier_),
        public_limit=_rate_limit_option(public_limit),
        host=host,
        port=port,
    )
    if os.path.exists(key_file):
        with open(key_file) as f:
            key, secret = f.readline().strip(), f.readline().strip()
    else:
        key, secret = new_key_file(key_file)
        click.echo(f"wrote a new random key pair to {key_file}")
    fake.add_key(key, secret)
    click.echo(f"fake Kraken listening on {fake.url} (key file {key_file}); Ctrl-C stops it")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a foreground server the way Ctrl-C does."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    main()
