"""Pusher: streams our records to the peer, a page at a time.

Meta with the counts, then memory batches, fact batches, done. Pages are
read one at a time and each send is asked of the RelayConnection, which
answers once the socket took the bytes, so no side holds a whole dataset.
Between pages the actor posts itself the next step (pykka's self-proxy
pattern), so a stop is handled between batches.

Records the peer has just sent us, and that we hold exactly as it does, are
not sent back (`StartPush.skip_ids` / `skip_facts`): the counts in the meta
leave them out too, so both sides' numbers say what really was new.

In protocol 2 the session knows exactly which records the peer lacks
(`StartPush.only_memories` / `only_facts`, from reconciling): those are
read by id, a batch at a time, and nothing else is.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pykka
from loguru import logger

from imprint.actors.base import ASK_TIMEOUT, ImprintActor, ask
from imprint.errors import ImprintError
from imprint.messages.events import Progress
from imprint.messages.records import fact_key, point_id, vector_to_bytes
from imprint.messages.session import (
    SendFrame,
    StartPush,
    TransferFailed,
    TransferFinished,
)
from imprint.messages.store import (
    CountFacts,
    CountMemories,
    PageFacts,
    PageMemories,
    RetrieveFacts,
    RetrieveMemories,
)
from imprint.messages.wire import (
    Dataset,
    DatasetCounts,
    Done,
    EncodedBatch,
    Meta,
    Request,
)

#: A batch frame stops growing past this many bytes, whatever batch_size says.
MAX_BATCH_BYTES = 4 * 1024 * 1024
_record_encoder = msgspec.json.Encoder()
#: What a batch frame adds around its records, with room for a 20-digit seq.
_FRAME_OVERHEAD = len(b'{"kind":"batch","dataset":"memories","seq":,"records":[]}') + 20


class _Next(msgspec.Struct, frozen=True):
    """Send the next page (posted to self)."""


def split_by_bytes(records: tuple[Any, ...], max_bytes: int = MAX_BATCH_BYTES,
                   extra: tuple[bytes | None, ...] = ()) -> list[tuple[msgspec.Raw, ...]]:
    """Encode each record once and cut the page into runs whose batch frame stays under
    `max_bytes` (one record at least); the encoded records are what goes on the wire.
    `extra` are vectors sent beside the records, counted as base64 (what JSON would take;
    the binary form is smaller)."""
    chunks: list[tuple[msgspec.Raw, ...]] = []
    current: list[msgspec.Raw] = []
    base = _FRAME_OVERHEAD + (len(b',"vectors":[],"model":""') + 16 if extra else 0)
    size = base
    for n_record, record in enumerate(records):
        encoded = msgspec.Raw(_record_encoder.encode(record))
        n = len(encoded) + 1  # and its comma
        if extra:
            vector = extra[n_record]
            n += (4 * ((len(vector) + 2) // 3) if vector is not None else 4) + 3
        if current and size + n > max_bytes:
            chunks.append(tuple(current))
            current, size = [], base
        current.append(encoded)
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
        super().__init__(boss=listener)
        self.relay = relay
        self.listener = listener
        self.memory_store = memory_store
        self.fact_store = fact_store
        self._batch_size = 500
        self._dataset = "memories"
        self._after: Any = None
        self._seq = {"memories": 0, "facts": 0}
        self._sent = {"memories": 0, "facts": 0}
        self._total = {"memories": 0, "facts": 0}
        self._running = False
        self._skip_ids: frozenset[str] = frozenset()
        self._skip_facts: frozenset[tuple[str, str, str, float]] = frozenset()
        self._only: dict[str, tuple[str, ...]] | None = None
        #: The model fingerprint whose vectors go with the memories ("": none).
        self._vectors = ""
        self._offset = 0
        #: The next page of selected memories, asked of the store ahead: (its offset, the future).
        self._ahead: tuple[int, Any] | None = None

    def handle(self, message: Any) -> Any:
        match message:
            case StartPush(batch_size=batch_size, request=request, skip_ids=skip_ids, skip_facts=skip_facts,
                           only_memories=only_memories, only_facts=only_facts, vectors=vectors):
                self._skip_ids, self._skip_facts, self._vectors = skip_ids, skip_facts, vectors
                if only_memories is not None or only_facts is not None:
                    # What the peer sent us meanwhile and we now hold as it does needs no answer.
                    echo = {fact_key(identity) for identity in skip_facts}
                    # In the store's own order (as a full transfer and export go), a batch at a time.
                    memories = sorted((i for i in only_memories or () if i not in skip_ids), key=point_id)
                    self._only = {"memories": tuple(memories),
                                  "facts": tuple(k for k in only_facts or () if k not in echo)}
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
            self.listener.tell(TransferFailed(message=str(exc)))

    def _send(self, frame: Any) -> None:
        ask(self.relay, SendFrame(frame=frame), timeout=300)

    def _start(self, batch_size: int, request: bool) -> None:
        self._batch_size = batch_size
        if request:
            self._send(Request.push(batch_size=batch_size))
        if self._only is not None:
            self._total = {dataset: len(keys) for dataset, keys in self._only.items()}
        else:
            # Every skipped record is in the store (it was just stored, or was there already).
            self._total["memories"] = max(0, ask(self.memory_store, CountMemories()) - len(self._skip_ids))
            counts = ask(self.fact_store, CountFacts())
            self._total["facts"] = max(0, counts.active + counts.ended - len(self._skip_facts))
        self._send(Meta(datasets=DatasetCounts(memories=self._total["memories"], facts=self._total["facts"])))
        self._running = True
        self.actor_ref.tell(_Next())

    def _next(self) -> None:
        if not self._running:
            return
        if self._only is not None:
            self._next_selected()
            return
        if self._dataset == "memories":
            page = ask(self.memory_store, PageMemories(limit=self._batch_size, after=self._after))
            skip = self._skip_ids
            self._send_records("memories", tuple(r for r in page.records if r.id not in skip) if skip else page.records)
            self._after = page.next_after
            if page.next_after is None or not page.records:
                self._dataset, self._after = "facts", None
        else:
            fpage = ask(self.fact_store, PageFacts(limit=self._batch_size, after=self._after))
            skip_facts = self._skip_facts
            self._send_records("facts", tuple(f.record for f in fpage.facts if f.record.identity not in skip_facts))
            self._after = fpage.next_after
            if fpage.next_after is None or not fpage.facts:
                self._finish()
                return
        self.actor_ref.tell(_Next())

    def _memories_of(self, offset: int) -> Any:
        """The store's answer for the selected memories from `offset` (asked ahead: see below)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == offset:
            future = ahead[1]
        else:
            future = self._retrieve(offset)
        # Ask for the next page now: the store reads it while this one is encoded and sent.
        if offset + self._batch_size < len(self._only["memories"]):
            self._ahead = (offset + self._batch_size, self._retrieve(offset + self._batch_size))
        try:
            return future.get(timeout=ASK_TIMEOUT)
        except pykka.ActorDeadError:
            raise ImprintError("internal error: the memory store stopped unexpectedly") from None
        except pykka.Timeout:
            raise ImprintError(f"the memory store did not answer within {ASK_TIMEOUT:.0f}s") from None

    def _retrieve(self, offset: int) -> Any:
        keys = self._only["memories"][offset:offset + self._batch_size]
        try:
            return self.memory_store.ask(RetrieveMemories(ids=keys, vectors=bool(self._vectors)), block=False)
        except pykka.ActorDeadError:
            raise ImprintError("internal error: the memory store stopped unexpectedly") from None

    def _next_selected(self) -> None:
        keys = self._only[self._dataset][self._offset:self._offset + self._batch_size]
        if keys:
            if self._dataset == "memories" and self._vectors:
                page = self._memories_of(self._offset)
                found = {r.id: (r, v, m) for r, v, m in zip(page.records, page.vectors or (), page.models or ())}
                chosen = [found[i] for i in keys if i in found]
                vectors = tuple(vector_to_bytes(v) if m == self._vectors and v else None for _, v, m in chosen)
                self._send_records("memories", tuple(r for r, _, _ in chosen), vectors=vectors)
            elif self._dataset == "memories":
                found = {r.id: r for r in self._memories_of(self._offset)}
                self._send_records("memories", tuple(found[i] for i in keys if i in found))
            else:
                self._send_records("facts", ask(self.fact_store, RetrieveFacts(keys=keys)))
            self._offset += len(keys)
        elif self._dataset == "memories":
            self._dataset, self._offset = "facts", 0
        else:
            self._finish()
            return
        self.actor_ref.tell(_Next())

    def _finish(self) -> None:
        self._send(Done())
        self._running = False
        self.listener.tell(TransferFinished(sent=dict(self._sent)))

    def _send_records(self, dataset: Dataset, records: tuple[Any, ...], vectors: tuple[bytes | None, ...] = ()) -> None:
        # Never send more than announced: records added since the count wait for the next sync.
        room = self._total[dataset] - self._sent[dataset]
        records = records[: max(room, 0)]
        done = 0
        for chunk in split_by_bytes(records, extra=vectors):
            self._seq[dataset] += 1
            mine = vectors[done:done + len(chunk)]
            # A run with no vector to give (none checked yet, say) goes as a plain batch.
            carried = {"vectors": mine, "model": self._vectors} if any(v is not None for v in mine) else {}
            done += len(chunk)
            self._send(EncodedBatch(dataset=dataset, seq=self._seq[dataset], records=chunk, **carried))
            self._sent[dataset] += len(chunk)
            # What left the socket; the session turns the peer's acks into confirmed progress.
            self.listener.tell(Progress(direction="send", dataset=dataset, done=self._sent[dataset],
                                        total=self._total[dataset], confirmed=False))

