"""Shared fixtures: a strict fake Kraken on 127.0.0.1 and clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import collector
from collector.fake_exchange import FakeKraken


@pytest.fixture
def fake() -> Iterator[FakeKraken]:
    with FakeKraken(tier=None) as exchange:
        yield exchange


@pytest.fixture
def keypair(fake: FakeKraken) -> tuple[str, str]:
    return fake.add_key()


@pytest.fixture
def api(fake: FakeKraken, keypair: tuple[str, str]) -> Iterator[collector.API]:
    client = collector.API(*keypair, timeout=10)
    client.uri = fake.url
    with client:
        yield client
