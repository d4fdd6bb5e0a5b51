"""Shared fixtures. Keep each section small and generic; add new sections below."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

# The model must never be fetched: set Hugging Face's offline switches before
# anything imports huggingface_hub (it reads them once, at import).
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------- actors

#: Seconds an actor may take to start (the model load dominates).
START_TIMEOUT = 180.0


@pytest.fixture(scope="session", autouse=True)
def _stop_all_actors_at_exit() -> Iterator[None]:
    """Whatever a test left running, no actor thread outlives the session."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=60)


@pytest.fixture(scope="session")
def _shared_embedder() -> Iterator[dict[str, pykka.ActorRef[Any]]]:
    holder: dict[str, pykka.ActorRef[Any]] = {}
    yield holder
    if "ref" in holder:
        try:
            holder["ref"].stop(timeout=60)
        except pykka.ActorDeadError:
            pass


@pytest.fixture
def embedder(_shared_embedder: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
    """A running Embedder on the bundled all-MiniLM-L6-v2, shared by the session.

    Loading the model costs seconds and the actor is stateless, so tests share
    one. Do not stop it in a test. If a test stopped it anyway (e.g. with
    `ActorRegistry.stop_all()`), the next user gets a fresh one.
    """
    from imprint.actors.embedder import Embedder
    from imprint.config import DEFAULT_MODEL
    from imprint.messages.store import Ping

    ref = _shared_embedder.get("ref")
    if ref is None or not ref.is_alive():
        ref = Embedder.start(model_name=DEFAULT_MODEL)
        _shared_embedder["ref"] = ref
        assert ref.ask(Ping(), timeout=START_TIMEOUT) is True
    return ref


@pytest.fixture
def start_actor() -> Iterator[Callable[..., pykka.ActorRef[Any]]]:
    """Start an actor class with keyword arguments; it is stopped after the test.

    Returns the ref without pinging it, so a test can assert on a start-up error.
    """
    refs: list[pykka.ActorRef[Any]] = []

    def start(actor_class: type[pykka.Actor], **kwargs: Any) -> pykka.ActorRef[Any]:
        ref = actor_class.start(**kwargs)
        refs.append(ref)
        return ref

    yield start
    for ref in reversed(refs):
        try:
            ref.stop(timeout=60)
        except pykka.ActorDeadError:
            pass


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> None:
    """Poll `condition` until it holds, failing the test after `timeout` seconds (for state only
    another process shows: a file, a pid, a relay's metrics)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- CLI subprocesses


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no IMPRINT_* setting leaks in from ours.

    The services the commands start exit after two idle minutes at most (each
    test also stops those of its data dirs when it ends: see below)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPRINT_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", IMPRINT_SERVICE_IDLE="120")
    env.update(extra)
    return env


# ---------------------------------------------------------------- the services commands start


#: Directories of a store's own files, where no data dir is: not walked (most of a test run's files).
_STORE_DIRS = frozenset({"segments", "wal", "workspaces", "payload_index"})


def _data_dirs(root: Path) -> Iterator[Path]:
    """The directories under `root` (itself included) that hold a service.lock. Walked after
    every test over the whole run's temporary files: a data dir is not descended into (they do
    not nest), nor is a store's inside."""
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        if any(e.name == "service.lock" for e in entries):
            yield Path(folder)
            continue
        stack.extend(e.path for e in entries if e.name not in _STORE_DIRS and e.is_dir(follow_symlinks=False))


def stop_services(root: Path, *, timeout: float = 20.0) -> int:
    """SIGTERM every imprint service holding a data dir under `root`, and wait for each to exit
    (SIGKILL after `timeout`). Returns how many were running."""
    import signal
    import time

    from tests.service_support import alive, service_pid

    pids = [pid for data_dir in _data_dirs(root) if (pid := service_pid(data_dir)) is not None]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return len(pids)


@pytest.fixture(autouse=True)
def _stop_services_of_the_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Services started by a test's commands do not outlive it (each holds a model: ~500 MB)."""
    yield
    stop_services(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def imprint_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m imprint --data-dir DIR ARGS…` and return the finished process.

    Call as `imprint_cli(data_dir, "add", "text", input=None, timeout=120)`;
    `data_dir=None` leaves `--data-dir` out. Output is decoded as UTF-8.
    """

    def run(
        data_dir: Path | str | None,
        *args: str,
        input: str | bytes | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "imprint"]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        argv += list(args)
        raw = subprocess.run(
            argv,
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            env=env or cli_env(),
        )
        return subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode("utf-8", "replace"), raw.stderr.decode("utf-8", "replace")
        )

    return run
