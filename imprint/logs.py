"""Logging: loguru to stderr and to a rotating file, with stdlib logging routed in."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

from loguru import logger

#: The same stdlib log line more often than this within REPEAT_WINDOW seconds is
#: counted, not written: asyncio logs "socket.send() raised exception." for every
#: write to a peer that vanished, and a ping flood made hundreds of KB of them.
REPEAT_LIMIT = 5
REPEAT_WINDOW = 10.0


class InterceptHandler(logging.Handler):
    """Send records of stdlib loggers (pykka, websocket-client, websockets, httpx) to loguru,
    at most REPEAT_LIMIT of the same line per REPEAT_WINDOW seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def _allowed(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            start, count = self._seen.get(key, (now, 0))
            if now - start > REPEAT_WINDOW:
                start, count = now, 0
            self._seen[key] = (start, count + 1)
            if len(self._seen) > 1000:
                self._seen.clear()
            return count < REPEAT_LIMIT

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not self._allowed(f"{record.name}:{record.levelno}:{message[:200]}"):
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, message)


def setup_logging(*, verbose: bool, log_dir: Path | None) -> None:
    """Configure loguru once per process.

    Args:
        verbose: debug output on stderr; otherwise warnings and errors only.
        log_dir: folder for `imprint.log` (rotated at 5 MB, 3 kept), or None.
    """
    logger.remove()
    # diagnose=True prints every local variable of a traceback (memory text, PINs);
    # only a user who asked for debug output (-v) gets that.
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING", format="{time:HH:mm:ss} {level: <7} {message}",
               diagnose=verbose, backtrace=verbose)
    if log_dir is not None:
        try:
            logger.add(log_dir / "imprint.log", level="DEBUG", rotation="5 MB", retention=3, enqueue=False,
                       diagnose=verbose, backtrace=verbose)
        except OSError:
            logger.warning("cannot write logs to {}", log_dir)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.DEBUG if verbose else logging.INFO, force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
