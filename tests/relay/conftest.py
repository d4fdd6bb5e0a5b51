"""Fixtures of the relay tests: the relays themselves come from tests/test_relay.py."""

from tests.e2e.conftest import spawn  # noqa: F401 - a fixture, shared
from tests.test_relay import make_relay  # noqa: F401 - a fixture, shared
