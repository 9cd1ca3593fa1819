"""Test doubles that ship with the package: a strict fake Kraken for tests and offline trials.

Nothing in the service imports this package; the CLI loads it only for ``collector fake-exchange``.
"""
