"""The order rules of one transfer stream (SPEC "Wire protocol", steps 4–5).

A stream is ``meta``, then batches, then ``done``::

    ┌────────┐  Meta  ┌───────────┐  Done  ┌──────────┐
    │ start  │ ─────▶ │ streaming │ ─────▶ │ finished │
    └────────┘        └───────────┘        └──────────┘
                        ▲       │ MemoryBatch / FactBatch
                        └───────┘ (seq = previous + 1 per dataset,
                                   records ≤ announced)

Any other frame, or a frame in the wrong state, raises
:class:`~imprint.errors.ProtocolError`; a peer's ``error`` frame raises
:class:`PeerStreamError`. After a failure the validator rejects everything,
so a caller cannot store a batch from a stream it already refused.

:class:`StreamValidator` is sans-I/O: it is fed decoded frames (see
:func:`imprint.messages.wire.decode_frame`) and returns what to do with
them, so the puller, the pusher and the provider share it, and tests feed it
frames without sockets or threads.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from imprint.errors import PeerStreamError, ProtocolError
from imprint.messages.wire import (
    DATASETS,
    Dataset,
    DatasetCounts,
    Done,
    FactBatch,
    Frame,
    Hello,
    MemoryBatch,
    Meta,
    Request,
    Response,
    StreamError,
)


class StreamFinished(msgspec.Struct, frozen=True, kw_only=True):
    """The stream ended with ``done``.

    ``short`` counts, per dataset, the records the meta announced but the
    peer did not send. That is accepted: the source may have shrunk while
    it streamed.
    """

    announced: DatasetCounts
    received: DatasetCounts
    short: DatasetCounts

    @property
    def complete(self) -> bool:
        """True when every announced record arrived."""
        return self.short.memories == 0 and self.short.facts == 0


#: What :meth:`StreamValidator.feed` returns: the meta (the stream started),
#: a batch to store, or the end of the stream.
StreamEvent: TypeAlias = Meta | MemoryBatch | FactBatch | StreamFinished

_FRAME_NAMES: dict[type, str] = {
    Hello: "HELLO",
    Request: "request",
    Response: "response",
    Meta: "meta",
    MemoryBatch: "memories batch",
    FactBatch: "facts batch",
    Done: "done",
    StreamError: "error",
}


class StreamValidator:
    """Checks the frames of ONE transfer stream, in the order they arrive.

    Example::

        validator = StreamValidator()
        for frame in frames:
            match validator.feed(frame):
                case MemoryBatch() | FactBatch() as batch:
                    store(batch)
                case StreamFinished() as finished:
                    break
    """

    def __init__(self) -> None:
        self._announced: DatasetCounts | None = None
        self._received: dict[Dataset, int] = dict.fromkeys(DATASETS, 0)
        self._last_seq: dict[Dataset, int] = dict.fromkeys(DATASETS, 0)
        self._finished = False
        self._failed: ProtocolError | None = None

    @property
    def announced(self) -> DatasetCounts | None:
        """The counts the meta announced; None before the meta."""
        return self._announced

    @property
    def received(self) -> DatasetCounts:
        """Records accepted so far, per dataset."""
        return DatasetCounts(**self._received)

    @property
    def finished(self) -> bool:
        """True once ``done`` was accepted."""
        return self._finished

    def feed(self, frame: Frame) -> StreamEvent:
        """Accept the next frame of the stream.

        Returns:
            The :class:`Meta` for the first frame, each batch (to be stored),
            and a :class:`StreamFinished` for ``done``.

        Raises:
            PeerStreamError: the frame is the peer's ``error`` frame.
            ProtocolError: the frame breaks the order or counts of the stream,
                or the validator already failed or finished.
        """
        if self._failed is not None:
            raise ProtocolError(f"stream already failed: {self._failed}")
        try:
            return self._accept(frame)
        except ProtocolError as e:
            self._failed = e
            raise

    def _accept(self, frame: Frame) -> StreamEvent:
        if self._finished:
            raise ProtocolError(f"unexpected {_name(frame)} frame after done")
        match frame:
            case StreamError(message=message):
                raise PeerStreamError(message)
            case Meta():
                if self._announced is not None:
                    raise ProtocolError("second meta frame in one stream")
                self._announced = frame.datasets
                return frame
            case MemoryBatch() | FactBatch():
                self._accept_batch(frame)
                return frame
            case Done():
                if self._announced is None:
                    raise ProtocolError("done frame before meta")
                self._finished = True
                received = self.received
                return StreamFinished(
                    announced=self._announced,
                    received=received,
                    short=DatasetCounts(
                        memories=self._announced.memories - received.memories,
                        facts=self._announced.facts - received.facts,
                    ),
                )
            case _:
                where = "before meta" if self._announced is None else "in a stream"
                raise ProtocolError(f"unexpected {_name(frame)} frame {where}")

    def _accept_batch(self, batch: MemoryBatch | FactBatch) -> None:
        dataset: Dataset = "memories" if isinstance(batch, MemoryBatch) else "facts"
        if self._announced is None:
            raise ProtocolError(f"{dataset} batch before meta")
        expected = self._last_seq[dataset] + 1
        if batch.seq != expected:
            raise ProtocolError(f"{dataset} batch has seq {batch.seq}, expected {expected}")
        if not batch.size:
            raise ProtocolError(f"{dataset} batch {batch.seq} is empty")
        total = self._received[dataset] + batch.size
        if total > self._announced[dataset]:
            raise ProtocolError(
                f"{dataset} batch {batch.seq} brings the total to {total}, "
                f"more than the {self._announced[dataset]} the meta announced"
            )
        self._last_seq[dataset] = batch.seq
        self._received[dataset] = total


def _name(frame: object) -> str:
    return _FRAME_NAMES.get(type(frame), type(frame).__name__)
