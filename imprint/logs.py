"""Logging: loguru to stderr and to a rotating file, with stdlib logging routed in."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from loguru import logger


class InterceptHandler(logging.Handler):
    """Send records of stdlib loggers (pykka, websocket-client, websockets, httpx) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(*, verbose: bool, log_dir: Path | None) -> None:
    """Configure loguru once per process.

    Args:
        verbose: debug output on stderr; otherwise warnings and errors only.
        log_dir: folder for `imprint.log` (rotated at 5 MB, 3 kept), or None.
    """
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING", format="{time:HH:mm:ss} {level: <7} {message}")
    if log_dir is not None:
        try:
            logger.add(log_dir / "imprint.log", level="DEBUG", rotation="5 MB", retention=3, enqueue=False)
        except OSError:
            logger.warning("cannot write logs to {}", log_dir)
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.DEBUG if verbose else logging.INFO, force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
