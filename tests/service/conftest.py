"""The service's tests run the real CLI like the end-to-end tests: the same `spawn`."""

from tests.e2e.conftest import spawn  # noqa: F401  (a fixture, shared)
