"""Puller: consumes one meta → batch… → done stream and stores it.

Each batch is validated (StreamValidator: order, seq, counts; the decoder
already checked shapes and sizes), then committed — memories through
Embedder → MemoryStore, facts in one FactStore transaction — before the
relay may hand on another batch. An interrupted stream therefore leaves only
whole batches, and a rerun completes it without duplicates.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from imprint.actors.base import ImprintActor, ask
from imprint.errors import ImprintError, ProtocolError
from imprint.local import embed_and_store
from imprint.messages.records import finalize_memory
from imprint.messages.session import (
    FrameHandled,
    Progress,
    SendFrame,
    StartPull,
    StreamFrame,
    TransferFailed,
    TransferFinished,
)
from imprint.messages.store import StoreFacts
from imprint.messages.wire import FactBatch, MemoryBatch, Meta, Request, RequestBody, StreamError
from imprint.sync.stream import StreamValidator

DATASETS = ("memories", "facts")


class Puller(ImprintActor):
    """Answers StartPull and StreamFrame; tells the listener Progress and TransferFinished/Failed.

    Args:
        relay: the RelayConnection (for the pull request and FrameHandled credits).
        listener: the session.
        embedder, memory_store, fact_store: where records go.
    """

    def __init__(self, *, relay: Any, listener: Any, embedder: Any, memory_store: Any, fact_store: Any) -> None:
        super().__init__()
        self.relay = relay
        self.listener = listener
        self.embedder = embedder
        self.memory_store = memory_store
        self.fact_store = fact_store
        self._validator: StreamValidator | None = None
        self._stats = {d: {"inserted": 0, "skipped": 0} for d in DATASETS}
        self._done = {d: 0 for d in DATASETS}
        self._phase = "pull"
        self._failed = False

    def handle(self, message: Any) -> Any:
        match message:
            case StartPull(batch_size=batch_size, request=request):
                self._validator = StreamValidator()
                self._phase = "pull" if request else "push"
                if request:
                    ask(self.relay, SendFrame(frame=Request(method="GET", path="/sync/pull", body=RequestBody(batch_size=batch_size))), timeout=60)
            case StreamFrame(frame=frame):
                self._on_frame(frame)
            case _:
                return super().handle(message)
        return None

    def _on_frame(self, frame: Any) -> None:
        is_batch = isinstance(frame, (MemoryBatch, FactBatch))
        try:
            # After done or a failure the validator refuses every frame.
            if self._validator is None:
                raise ProtocolError(f"unexpected {type(frame).__name__} frame: no transfer was requested")
            self._validator.feed(frame)
            if isinstance(frame, Meta):
                for dataset in DATASETS:
                    self._progress(dataset)
            elif isinstance(frame, MemoryBatch):
                records = tuple(finalize_memory(r) for r in frame.records)
                result = embed_and_store(self.embedder, self.memory_store, records)
                self._count("memories", len(records), result)
            elif isinstance(frame, FactBatch):
                result = ask(self.fact_store, StoreFacts(records=tuple(frame.records)))
                self._count("facts", len(frame.records), result)
            elif self._validator.finished:
                self.listener.tell(TransferFinished(phase=self._phase, stats=self._stats))
        except ProtocolError as exc:
            self._fail(str(exc))
        except ImprintError as exc:
            self._fail(f"storing a batch failed: {exc}")
        finally:
            if is_batch:
                self.relay.tell(FrameHandled())

    def _count(self, dataset: str, n: int, result: Any) -> None:
        stats = self._stats[dataset]
        stats["inserted"] += result.inserted
        stats["skipped"] += result.skipped
        if getattr(result, "ended", 0):
            stats["ended"] = stats.get("ended", 0) + result.ended
        self._done[dataset] += n
        self._progress(dataset)

    def _progress(self, dataset: str) -> None:
        announced = self._validator.announced if self._validator else None
        total = announced[dataset] if announced is not None else 0
        self.listener.tell(Progress(phase=self._phase, dataset=dataset, done=self._done[dataset], total=total))

    def _fail(self, message: str) -> None:
        # Once only; a frame after a finished stream is a failure too.
        if self._failed:
            return
        self._failed = True
        logger.debug("pull failed: {}", message)
        self.listener.tell(TransferFailed(phase=self._phase, message=message))


__all__ = ["Puller", "StreamError"]
