"""Puller: receives one meta → batch… → done stream into the spool.

The first of the two receive stages (see :mod:`imprint.spool`). Each frame is
checked against the stream's order rules (StreamValidator; the decoder
already checked shapes and sizes and left out the records our schema
refuses), and each batch is committed to the spool in one transaction before
the relay may hand on another. Nothing here waits for embedding, so the
socket is read as fast as the peer sends: keepalive pings are answered and
no peer ever sees us stall. The Storer stores from the spool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from imprint.actors.base import ImprintActor, ask
from imprint.errors import DiskFullError, ImprintError, ProtocolError
from imprint.messages.records import fact_key, finalize_memory
from imprint.messages.session import (
    BatchSpooled,
    FrameHandled,
    SendFrame,
    StartPull,
    StreamFrame,
    StreamSpooled,
    TransferFailed,
    Wake,
)
from imprint.messages.store import FindMissing, RetrieveFacts
from imprint.messages.wire import FactBatch, MemoryBatch, Meta, Request
from imprint.protocol.stream import StreamValidator
from imprint.spool import DEFAULT_MAX_BYTES, Spool

#: Refusal reasons logged per stream; the rest are only counted.
LOGGED_REFUSALS = 5


class Puller(ImprintActor):
    """Answers StartPull and StreamFrame; tells the listener BatchSpooled,
    StreamSpooled or TransferFailed, and wakes the Storer.

    Args:
        relay: the RelayConnection (for the pull request and FrameHandled credits).
        listener: the session.
        storer: the Storer, woken after every batch.
        spool_path: the workspace's spool.
        spool_max_bytes: how much may wait in the spool.
    """

    def __init__(
        self, *, relay: Any, listener: Any, storer: Any, spool_path: Path, spool_max_bytes: int = DEFAULT_MAX_BYTES,
        memory_store: Any = None, fact_store: Any = None,
    ) -> None:
        super().__init__(boss=listener)
        self.relay = relay
        self.listener = listener
        self.storer = storer
        #: Asked which received records are already here (StartPull.count_known).
        self.memory_store = memory_store
        self.fact_store = fact_store
        self._count_known = False
        self.spool_path = spool_path
        self.spool_max_bytes = spool_max_bytes
        self._spool: Spool | None = None
        self._validator: StreamValidator | None = None
        self._stream = ""
        self._failed = False
        self._logged = 0

    def start_up(self) -> None:
        self._spool = Spool(self.spool_path, max_bytes=self.spool_max_bytes)

    def shut_down(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def handle(self, message: Any) -> Any:
        match message:
            case StartPull(stream=stream, batch_size=batch_size, request=request, peer=peer, count_known=count_known):
                self._count_known = count_known and self.memory_store is not None and self.fact_store is not None
                self._start(stream, batch_size, request, peer)
            case StreamFrame(frame=frame):
                self._on_frame(frame)
            case _:
                return super().handle(message)
        return None

    def _start(self, stream: str, batch_size: int, request: bool, peer: str = "") -> None:
        self._validator = StreamValidator()
        self._stream = stream
        try:
            self._spool.open_stream(stream, peer=peer)
            if request:
                ask(self.relay, SendFrame(frame=Request.pull(batch_size=batch_size)), timeout=60)
        except ImprintError as exc:
            self._fail(str(exc))

    def _on_frame(self, frame: Any) -> None:
        is_batch = isinstance(frame, (MemoryBatch, FactBatch))
        try:
            # After done or a failure the validator refuses every frame.
            if self._validator is None:
                raise ProtocolError(f"unexpected {type(frame).__name__} frame: no transfer was requested")
            self._validator.feed(frame)
            if isinstance(frame, (MemoryBatch, FactBatch)):
                self._spool_batch(frame)
            elif isinstance(frame, Meta):
                pass  # the session reads the totals from the frame it routed
            elif self._validator.finished:
                self._spool.complete_stream(self._stream)
                self.listener.tell(StreamSpooled(stream=self._stream))
                self.storer.tell(Wake())
        except (ProtocolError, DiskFullError) as exc:
            self._fail(str(exc))
        except ImprintError as exc:
            self._fail(f"keeping a received batch failed: {exc}")
        finally:
            if is_batch:
                self.relay.tell(FrameHandled())

    def _spool_batch(self, batch: MemoryBatch | FactBatch) -> None:
        for reason in batch.refusals:
            if self._logged < LOGGED_REFUSALS:
                self._logged += 1
                logger.warning("refused a record from the peer: {}", reason)
        if isinstance(batch, MemoryBatch):
            records: tuple[Any, ...] = tuple(finalize_memory(r) for r in batch.records)
        else:
            records = batch.records
        already = 0
        if records:
            carried = {"vectors": batch.vectors, "model": batch.model} if isinstance(batch, MemoryBatch) else {}
            self._spool.append(self._stream, batch.dataset, records, **carried)
            self.storer.tell(Wake())
            if self._count_known:
                already = self._already_here(batch.dataset, records)
        self.listener.tell(BatchSpooled(stream=self._stream, dataset=batch.dataset, received=batch.size,
                                        refused=batch.refused, refusals=batch.refusals, already=already))

    def _already_here(self, dataset: str, records: tuple[Any, ...]) -> int:
        """How many of these records this machine holds already (by id; any version)."""
        if dataset == "memories":
            found = ask(self.memory_store, FindMissing(ids=tuple({r.id: None for r in records})), timeout=120)
            return sum(1 for r in records if r.id in found.stored)
        keys = [fact_key(r.identity) for r in records]
        held = {fact_key(f.identity) for f in ask(self.fact_store, RetrieveFacts(keys=tuple(set(keys))), timeout=120)}
        return sum(1 for k in keys if k in held)

    def _fail(self, message: str) -> None:
        # Once only; a frame after a finished stream is a failure too.
        if self._failed:
            return
        self._failed = True
        logger.debug("receiving failed: {}", message)
        self.listener.tell(TransferFailed(message=message))
