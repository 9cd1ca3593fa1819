"""``collector fake-exchange``: the strict local stand-in for Kraken, to try a job file offline."""

from __future__ import annotations

import os
import signal

import click

from .. import methods
from ..errors import CollectorError
from ..ratelimit import RateLimit, tier
from .base import interrupt, say


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


@click.command("fake-exchange")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, help="Port (0: any free port).")
@click.option(
    "--key-file",
    default="fake.key",
    show_default=True,
    help="krakenex-format key file to accept; created with a random key if missing.",
)
@click.option(
    "--tier",
    "tier_",
    default="starter",
    show_default=True,
    help="Private counter: starter, intermediate, pro, MAX/DECAY (e.g. 20/1) or none.",
)
@click.option(
    "--public-limit",
    default="none",
    show_default=True,
    help="Per-IP public counter, MAX/DECAY (e.g. 5/1) or none.",
)
@click.option(
    "--growth",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="New entries a second in each history (ledger entries, fills, closed orders, public "
    "trades).",
)
@click.option(
    "--permissions",
    metavar="LIST",
    help="The key's permissions, comma-separated from funds, open, closed, ledger, export "
    "(default: all); a private call that needs another gets EGeneral:Permission denied.",
)
@click.option(
    "--ws-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Also serve Kraken's WebSocket v2 public feed (instrument, book, trade, ticker, ohlc) "
    "over the same market, on this port (0: any free one), for a job file's streams.",
)
def fake_exchange(
    host: str,
    port: int,
    key_file: str,
    tier_: str,
    public_limit: str,
    growth: float,
    permissions: str | None,
    ws_port: int | None,
) -> None:
    """Serve a strict local stand-in for Kraken's REST API, to try a job file offline.

    \b
    Example:
        collector fake-exchange --port 8765 --key-file fake.key
        # then in jobs.yaml:  kraken: {url: http://127.0.0.1:8765, key_file: fake.key}
        # inject a fault:     curl -X POST 'http://127.0.0.1:8765/_fake/fault?kind=http_502'

    \b
    Streams offline: --ws-port 8766, then kraken: {ws_url: ws://127.0.0.1:8766/v2}

    \b
    Rehearse going live with a key that lacks a permission (Ledgers is denied):
        collector fake-exchange --key-file fake.key --permissions funds,open,closed

    \b
    Fault kinds (POST /_fake/fault?kind=K[&method=M][&count=N]):
        http_500, http_502, http_520  an HTML error page with that status
        slow                          answer after delay= seconds (default 5)
        reset                         reset the connection, no answer
        truncated                     cut-off JSON
        not_json                      an HTML page with status 200
        kraken_error                  {"error": [error=...]} (default EService:Unavailable)
        raw                           body= as given, with status= (default 200)

    \b
    The account disagreeing with itself (for collector verify to catch):
        POST /_fake/hide?id=L...              leave one ledger entry out of Ledgers
        POST /_fake/offset?asset=A&amount=X   add X to asset A in Balance, BalanceEx
    """
    from ..testing.fake_exchange import FakeKraken, new_key_file

    allowed = _permissions_option(permissions)
    try:
        fake = FakeKraken(
            tier=_rate_limit_option(tier_),
            public_limit=_rate_limit_option(public_limit),
            host=host,
            port=port,
            growth=growth,
            ws=ws_port is not None,
            ws_port=ws_port or 0,
        )
    except OSError as exc:
        raise CollectorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if fake.ws is not None:
        try:
            fake.ws.start()
        except OSError as exc:
            fake.close()
            raise CollectorError(
                f"cannot listen on {host}:{ws_port} (--ws-port): {exc.strerror or exc}"
            ) from None
    try:
        if os.path.exists(key_file):
            with open(key_file) as f:
                key, secret = f.readline().strip(), f.readline().strip()
        else:
            key, secret = new_key_file(key_file)
            say(f"wrote a new random key pair to {key_file}")
        fake.add_key(key, secret, permissions=allowed)
    except (OSError, ValueError) as exc:
        fake.close()
        reason = getattr(exc, "strerror", None) or "not a key file (key, then base64 secret)"
        raise CollectorError(f"{key_file}: {reason}") from None
    say(f"fake Kraken listening on {fake.url} (key file {key_file}); Ctrl-C stops it")
    if fake.ws is not None:
        say(f"its WebSocket v2 feed on {fake.ws_url} (in the job file: kraken.ws_url)")
    if allowed is not None:
        say(f"the key may only: {', '.join(sorted(allowed)) or 'nothing private'}")
    signal.signal(signal.SIGTERM, interrupt)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


#: ``fake-exchange --permissions`` names for Kraken's key permissions.
_PERMISSIONS = {
    "funds": methods.QUERY_FUNDS,
    "open": methods.QUERY_OPEN,
    "closed": methods.QUERY_CLOSED,
    "ledger": methods.QUERY_LEDGER,
    "export": methods.EXPORT_DATA,
}


def _permissions_option(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in _PERMISSIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)}; use {', '.join(_PERMISSIONS)}",
            param_hint="--permissions",
        )
    return frozenset(_PERMISSIONS[n] for n in names)
