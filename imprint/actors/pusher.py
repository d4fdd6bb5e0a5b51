"""Pusher: streams our records to the peer, a page at a time.

Meta with the counts, then memory batches, fact batches, done. Pages are
read one at a time and each send is asked of the RelayConnection, which
answers once the socket took the bytes, so no side holds a whole dataset.
Between pages the actor posts itself the next step (pykka's self-proxy
pattern), so a stop is handled between batches.
"""

from __future__ import annotations

from typing import Any

import msgspec
from loguru import logger

from imprint.actors.base import ImprintActor, ask
from imprint.errors import ImprintError
from imprint.messages.records import MemoryRecord
from imprint.messages.session import Progress, SendFrame, StartPush, TransferFailed, TransferFinished
from imprint.messages.store import CountFacts, CountMemories, PageFacts, PageMemories
from imprint.messages.wire import DatasetCounts, Done, FactBatch, MemoryBatch, Meta, Request, RequestBody

#: A batch frame stops growing past this many bytes, whatever batch_size says.
MAX_BATCH_BYTES = 4 * 1024 * 1024
_size_encoder = msgspec.json.Encoder()
#: What a batch frame adds around its records, with room for a 20-digit seq.
_FRAME_OVERHEAD = len(b'{"kind":"batch","dataset":"memories","seq":,"records":[]}') + 20


class _Next(msgspec.Struct, frozen=True):
    """Send the next page (posted to self)."""


def split_by_bytes(records: tuple[Any, ...], max_bytes: int = MAX_BATCH_BYTES) -> list[tuple[Any, ...]]:
    """Cut a page into runs whose batch frame stays under `max_bytes` (one record at least)."""
    chunks: list[tuple[Any, ...]] = []
    current: list[Any] = []
    size = _FRAME_OVERHEAD
    for record in records:
        n = len(_size_encoder.encode(record)) + 1  # and its comma
        if current and size + n > max_bytes:
            chunks.append(tuple(current))
            current, size = [], _FRAME_OVERHEAD
        current.append(record)
        size += n
    if current:
        chunks.append(tuple(current))
    return chunks


class Pusher(ImprintActor):
    """Answers StartPush; tells the listener Progress and TransferFinished/Failed.

    Args:
        relay: the RelayConnection.
        listener: the session.
        memory_store, fact_store: where records come from.
    """

    def __init__(self, *, relay: Any, listener: Any, memory_store: Any, fact_store: Any) -> None:
        super().__init__()
        self.relay = relay
        self.listener = listener
        self.memory_store = memory_store
        self.fact_store = fact_store
        self._batch_size = 500
        self._phase = "pull"
        self._dataset = "memories"
        self._after: Any = None
        self._seq = {"memories": 0, "facts": 0}
        self._sent = {"memories": 0, "facts": 0}
        self._total = {"memories": 0, "facts": 0}
        self._running = False

    def handle(self, message: Any) -> Any:
        match message:
            case StartPush(batch_size=batch_size, request=request):
                self._guard(self._start, batch_size, request)
            case _Next():
                self._guard(self._next)
            case _:
                return super().handle(message)
        return None

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ImprintError as exc:
            self._running = False
            logger.debug("push failed: {}", exc)
            self.listener.tell(TransferFailed(phase=self._phase, message=str(exc)))

    def _send(self, frame: Any) -> None:
        ask(self.relay, SendFrame(frame=frame), timeout=300)

    def _start(self, batch_size: int, request: bool) -> None:
        self._batch_size = batch_size
        # The provider answers a pull; the consumer pushes.
        self._phase = "push" if request else "pull"
        if request:
            self._send(Request(method="POST", path="/sync/push", body=RequestBody(batch_size=batch_size)))
        self._total["memories"] = ask(self.memory_store, CountMemories())
        counts = ask(self.fact_store, CountFacts())
        self._total["facts"] = counts.active + counts.ended
        self._send(Meta(datasets=DatasetCounts(memories=self._total["memories"], facts=self._total["facts"])))
        self._running = True
        self.actor_ref.tell(_Next())

    def _next(self) -> None:
        if not self._running:
            return
        if self._dataset == "memories":
            page = ask(self.memory_store, PageMemories(limit=self._batch_size, after=self._after))
            self._send_records("memories", page.records)
            self._after = page.next_after
            if page.next_after is None or not page.records:
                self._dataset, self._after = "facts", None
        else:
            fpage = ask(self.fact_store, PageFacts(limit=self._batch_size, after=self._after))
            self._send_records("facts", tuple(f.record for f in fpage.facts))
            self._after = fpage.next_after
            if fpage.next_after is None or not fpage.facts:
                self._send(Done())
                self._running = False
                self.listener.tell(
                    TransferFinished(phase=self._phase, stats={d: {"sent": n} for d, n in self._sent.items()})
                )
                return
        self.actor_ref.tell(_Next())

    def _send_records(self, dataset: str, records: tuple[Any, ...]) -> None:
        # Never send more than announced: records added since the count wait for the next sync.
        room = self._total[dataset] - self._sent[dataset]
        records = records[: max(room, 0)]
        for chunk in split_by_bytes(records):
            self._seq[dataset] += 1
            if dataset == "memories":
                frame: Any = MemoryBatch(seq=self._seq[dataset], records=chunk)
            else:
                frame = FactBatch(seq=self._seq[dataset], records=chunk)
            self._send(frame)
            self._sent[dataset] += len(chunk)
            self.listener.tell(Progress(phase=self._phase, dataset=dataset, done=self._sent[dataset], total=self._total[dataset]))


__all__ = ["Pusher", "MemoryRecord"]
