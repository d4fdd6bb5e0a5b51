"""Wire frames of sync (SPEC "Wire protocol"), and the one codec for them.

Every frame is one JSON object. Requests carry a ``method``, responses a
``status``, and the frames of a transfer stream a ``kind``::

    consumer                         provider
    Hello          ──────────────▶
                   ◀──────────────   Response 200 "ok" | 400 | 403
    Request GET /sync/pull ──────▶
                   ◀──────────────   Meta, MemoryBatch/FactBatch…, Done | StreamError
    Request POST /sync/push ─────▶
    Meta, …batches, Done ────────▶
                   ◀──────────────   Response 200 STATS | 404 "unknown path"

:func:`decode_frame` is the only place where bytes from a peer become
frames: it reads the tag fields first (a small probe Struct), then decodes
the whole frame against its Struct, so shape, type and size validation is
msgspec's job. Whatever is wrong with the input, it raises
:class:`~imprint.errors.ProtocolError` with a one-line message, never
anything else. :func:`encode_frame` writes exactly the plaintext form of
SPEC, so a peer of the original reads our frames unchanged.

Frames are frozen: actors pass them between threads without copying. New
fields get defaults (and are omitted when at their default where SPEC's
shape must hold), so older peers still decode them.
"""

from __future__ import annotations

import codecs
import enum
import struct
import time
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from imprint.errors import ProtocolError
from imprint.messages.records import FactRecord, MemoryRecord, Tombstone, dated_ahead

#: Largest frame (UTF-8 bytes) we decode in the encrypted mode. A full batch
#: of 500 memories fits easily; a record alone may be 1 MiB (``MAX_RECORD_BYTES``).
MAX_FRAME_BYTES: Final = 32 * 1024 * 1024
#: Largest frame of the plaintext mode. Imprint's own clients send 500 records
#: a batch with 768-float vectors and cap nothing: 10-80 MB frames occur.
MAX_PLAINTEXT_FRAME_BYTES: Final = 256 * 1024 * 1024
#: Reasons kept for the records a batch refused (the rest are only counted).
MAX_REFUSAL_REASONS: Final = 5
#: Default records per batch (SPEC), and the bounds a request may ask for.
DEFAULT_BATCH_SIZE: Final = 500
MAX_BATCH_SIZE: Final = 5000
#: Longest message carried by an error frame or a string response body.
MAX_MESSAGE_CHARS: Final = 64 * 1024

#: Request paths of SPEC.
PULL_PATH: Final = "/sync/pull"
PUSH_PATH: Final = "/sync/push"

#: Response bodies of SPEC.
OK: Final = "ok"
INVALID_PIN: Final = "invalid PIN"
REJECTED_BY_USER: Final = "rejected by user"
UNKNOWN_PATH: Final = "unknown path"

Dataset: TypeAlias = Literal["memories", "facts"]
#: Who serves (provider) and who joins (consumer): the relay's `role`, a session's side.
Role: TypeAlias = Literal["provider", "consumer"]
#: The secure channel (ours) or SPEC's plaintext frames (Imprint's own clients).
Mode: TypeAlias = Literal["encrypted", "plaintext"]
DATASETS: Final[tuple[Dataset, ...]] = ("memories", "facts")

HostField = Annotated[str, msgspec.Meta(max_length=255)]
Fingerprint = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{8}$")]
PinField = Annotated[str, msgspec.Meta(max_length=64)]
KeyField = Annotated[str, msgspec.Meta(max_length=1024)]
PathField = Annotated[str, msgspec.Meta(max_length=1024)]
Message = Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Seq = Annotated[int, msgspec.Meta(ge=1)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]


# Handshake -------------------------------------------------------------------


#: The sync protocol this version speaks in the encrypted mode: 2 reconciles
#: (only the difference moves, tombstones travel); a peer that says nothing
#: (an older imprint) gets the full transfer of version 1. The plaintext mode
#: is always SPEC's protocol, unchanged.
PROTOCOL_VERSION: Final = 2


#: A model fingerprint (16 hex digits), or empty.
ModelField = Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{16})?$")]
#: The vectors of the three canary sentences (imprint.fingerprint.CANARIES), float32,
#: base64 in JSON; up to 8192 dimensions each.
CanaryField = Annotated[bytes, msgspec.Meta(max_length=3 * 8192 * 4)]


ItemCount = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]


class Hello(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="method", tag="HELLO"):
    """Consumer → provider, first frame: who is asking, and the session PIN.

    ``public_key``, ``signature`` and ``protocol`` belong to the encrypted
    mode (the HELLO is sealed there); empty fields are left out of the
    encoding, so the plaintext HELLO is exactly SPEC's.
    """

    hostname: HostField
    user: HostField
    os: HostField
    fingerprint: Fingerprint
    pin: PinField = ""
    public_key: KeyField = ""
    signature: KeyField = ""
    protocol: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    #: Protocol 2: the fingerprint of the model our vectors come from (imprint.fingerprint);
    #: a peer with the same one may send its vectors with its memories.
    model: ModelField = ""
    #: Protocol 2: our model's vectors of the canary sentences (they must agree with the peer's too).
    canaries: CanaryField = b""
    #: Protocol 2: how many reconciliation items we hold, rounded up to a power of two (what the
    #: peer may claim while reconciling is bounded by it; 0: not said).
    items: ItemCount = 0


class ProviderIdentity(msgspec.Struct, frozen=True):
    """The body of the provider's 200 to a HELLO in the encrypted mode: who the
    provider is, its key, and its signature over the session transcript (so the
    joining side can show, and check, whom it is about to sync with). The
    plaintext mode answers "ok", as Imprint's own clients do."""

    hostname: HostField
    user: HostField
    os: HostField
    fingerprint: Fingerprint
    public_key: KeyField
    signature: KeyField
    protocol: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    model: ModelField = ""
    canaries: CanaryField = b""
    items: ItemCount = 0


class RequestBody(msgspec.Struct, frozen=True):
    """Options of a pull or push request."""

    batch_size: BatchSize = DEFAULT_BATCH_SIZE


class Request(msgspec.Struct, frozen=True):
    """Consumer → provider: ``GET /sync/pull`` or ``POST /sync/push``."""

    method: Literal["GET", "POST"]
    path: PathField
    body: RequestBody = RequestBody()

    @classmethod
    def pull(cls, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Request:
        """The pull request of SPEC: the provider answers with a stream."""
        return cls("GET", PULL_PATH, RequestBody(batch_size))

    @classmethod
    def push(cls, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Request:
        """The push request of SPEC: the consumer's own stream follows it."""
        return cls("POST", PUSH_PATH, RequestBody(batch_size))


class DatasetStats(msgspec.Struct, frozen=True):
    """What a receiver did with the records of one dataset.

    ``inserted`` are new here, ``skipped`` were already here, ``rejected``
    were refused by our schema (Imprint's own clients store some records we
    refuse, e.g. whitespace-only content). ``rejected`` is ours: the body
    leaves it out when it is 0, so the STATS stay exactly Imprint's shape.
    """

    inserted: Count = 0
    skipped: Count = 0
    rejected: Count = 0

    def __add__(self, other: DatasetStats) -> DatasetStats:
        return type(self)(**{f: getattr(self, f) + getattr(other, f) for f in self.__struct_fields__})


class MemoryStats(DatasetStats, frozen=True):
    """Memory counts; ``updated`` of the skipped replaced our copy of the memory (a
    newer text of it, or an earlier copy of the same text); ours, left out when 0."""

    updated: Count = 0


class FactStats(DatasetStats, frozen=True):
    """Fact counts; ``ended`` counts open facts that an incoming end time closed
    (ours; left out of the body when 0)."""

    ended: Count = 0


class SyncStats(msgspec.Struct, frozen=True):
    """The STATS body the provider answers a push with (SPEC step 6)."""

    memories: MemoryStats = MemoryStats()
    facts: FactStats = FactStats()

    def to_body(self) -> dict[str, Any]:
        """The JSON body, shaped exactly as Imprint's unless something was rejected or ended."""
        body = msgspec.to_builtins(self)
        for dataset in body.values():
            for extra in ("rejected", "updated", "ended"):
                if dataset.get(extra) == 0:
                    del dataset[extra]
        return body

    @classmethod
    def from_body(cls, body: object) -> SyncStats:
        """Read a STATS body: an object, or (as Imprint's Python provider sends it) a JSON string of one.

        Raises:
            ProtocolError: the body is not a STATS object.
        """
        if isinstance(body, str):
            try:
                body = msgspec.json.decode(body)
            except msgspec.DecodeError:
                raise ProtocolError(f"expected stats, got the text {_short(body)}") from None
        try:
            return msgspec.convert(body, cls)
        except msgspec.ValidationError as e:
            raise ProtocolError(_one_line(f"bad stats body: {e}")) from None


class Response(msgspec.Struct, frozen=True):
    """Provider → consumer: the answer to a HELLO or a request.

    ``body`` is a short string (``"ok"``, a reason) or, after a push, the
    STATS object (see :meth:`stats`).
    """

    status: Status
    body: Message | dict[str, Any] = ""

    @property
    def is_ok(self) -> bool:
        return self.status == 200

    @classmethod
    def ok(cls) -> Response:
        return cls(200, OK)

    @classmethod
    def bad_request(cls, reason: str) -> Response:
        return cls(400, reason)

    @classmethod
    def forbidden(cls, reason: str) -> Response:
        """403; ``reason`` is :data:`INVALID_PIN` or :data:`REJECTED_BY_USER`."""
        return cls(403, reason)

    @classmethod
    def not_found(cls) -> Response:
        return cls(404, UNKNOWN_PATH)

    @classmethod
    def with_stats(cls, stats: SyncStats) -> Response:
        """200 with the STATS of a stored push."""
        return cls(200, stats.to_body())

    def stats(self) -> SyncStats:
        """The STATS of a 200 push response (an object, or a JSON string of one).

        Raises:
            ProtocolError: the response is not a 200 with a STATS body.
        """
        if not self.is_ok:
            raise ProtocolError(f"expected a 200 response with stats, got {self.status} {_short(self.body)}")
        return SyncStats.from_body(self.body)


# Transfer stream -------------------------------------------------------------


class DatasetCounts(msgspec.Struct, frozen=True):
    """A record count per dataset; ``counts["facts"]`` reads one by name."""

    memories: Count
    facts: Count

    def __getitem__(self, dataset: Dataset) -> int:
        if dataset not in DATASETS:
            raise KeyError(dataset)
        return getattr(self, dataset)


class Meta(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", tag="meta"):
    """First frame of a stream: how many records of each dataset will follow.

    ``vectors`` is set by the original when its memory records carry
    vectors; we never use them, and leave the field out when false.
    """

    datasets: DatasetCounts
    vectors: bool = False


class MemoryBatch(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind", tag="batch"):
    """Some memories of a stream; ``seq`` counts from 1 per dataset.

    A ``"vector"`` Imprint's own clients add to a record is ignored on decoding.
    A record our schema refuses does not fail the frame: :func:`decode_frame`
    leaves it out, counts it in ``refused`` and keeps the first reasons in
    ``refusals``. Those two never go on the wire (empty, they are omitted).

    Protocol 2, between peers running the same model: ``vectors`` holds each
    record's vector (little-endian float32; None where the sender has none of
    that model) and ``model`` the fingerprint they come from. The receiver
    checks a sample. Sealed, such a batch travels as a :func:`pack_vector_batch`
    frame (raw vectors after the JSON); in JSON they would be base64.
    """

    dataset: Literal["memories"]
    seq: Seq
    records: Annotated[tuple[MemoryRecord, ...], msgspec.Meta(max_length=MAX_BATCH_SIZE)]
    refused: Count = 0
    refusals: tuple[str, ...] = ()
    vectors: tuple[bytes | None, ...] = ()
    model: ModelField = ""

    @classmethod
    def of(cls, seq: int, records: tuple[MemoryRecord, ...]) -> MemoryBatch:
        return cls(dataset="memories", seq=seq, records=records)

    @property
    def size(self) -> int:
        """Records the sender sent in this batch, refused ones included."""
        return len(self.records) + self.refused


class FactBatch(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind", tag="batch"):
    """Some facts of a stream; ``seq`` counts from 1 per dataset. Refused
    records are left out and counted, as in :class:`MemoryBatch`."""

    dataset: Literal["facts"]
    seq: Seq
    records: Annotated[tuple[FactRecord, ...], msgspec.Meta(max_length=MAX_BATCH_SIZE)]
    refused: Count = 0
    refusals: tuple[str, ...] = ()

    @classmethod
    def of(cls, seq: int, records: tuple[FactRecord, ...]) -> FactBatch:
        return cls(dataset="facts", seq=seq, records=records)

    @property
    def size(self) -> int:
        """Records the sender sent in this batch, refused ones included."""
        return len(self.records) + self.refused


class EncodedBatch(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind", tag="batch"):
    """A batch we send, its records already JSON: the sender encodes each record once,
    to cut batches by size, and those bytes go on the wire as they are. Encodes exactly
    as :class:`MemoryBatch` / :class:`FactBatch` with the same records; never decoded."""

    dataset: Dataset
    seq: Seq
    records: tuple[msgspec.Raw, ...]
    vectors: tuple[bytes | None, ...] = ()
    model: str = ""


class Ack(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="kind", tag="ack"):
    """Receiver → sender, encrypted mode only: how far the receiver got with
    the stream it is being sent. ``received`` records are safe in its spool
    (refused ones included), ``stored`` records are stored (or refused); the
    last ack of a stream carries its ``stats``. Imprint's own clients never
    see one: the plaintext mode sends none."""

    received: DatasetCounts
    stored: DatasetCounts
    stats: SyncStats | None = None


# Reconciliation (encrypted mode, protocol 2) ------------------------------------

#: Largest item (dataset byte, key, version) and bound of a reconciliation range.
MAX_ITEM_BYTES: Final = 96
#: Ranges in one reconciliation message, and items listed in one.
MAX_RANGES: Final = 1 << 18
MAX_LISTED: Final = 1 << 20
Item = Annotated[bytes, msgspec.Meta(max_length=MAX_ITEM_BYTES)]
class RangeMode(enum.IntEnum):
    """What a reconciliation range says (one byte on the wire)."""

    SKIP = 0  # nothing to do here
    FP = 1  # my fingerprint of this range: compare with yours
    LIST = 2  # the digests of every item I have here: answer with the difference
    FINAL = 3  # the answer to your list: items of mine you lack, and a bit for each of your digests I lack
    FILL = 4  # the answer to your final: the items its bits named


#: Bytes of an item's digest in a list (the top of its SHA-256).
DIGEST_BYTES: Final = 8


class Range(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One range of a reconciliation message (see :mod:`imprint.protocol.reconcile`);
    it ends at ``upper`` (exclusive; None: the end)."""

    mode: RangeMode
    upper: Item | None = None
    fingerprint: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    items: Annotated[tuple[Item, ...], msgspec.Meta(max_length=MAX_LISTED)] = ()
    #: LIST: the digests of the lister's items, in order, back to back.
    digests: Annotated[bytes, msgspec.Meta(max_length=MAX_LISTED * DIGEST_BYTES)] = b""
    #: FINAL: bit i (of byte i // 8, lowest bit first) set when the i-th listed digest is not here.
    marks: Annotated[bytes, msgspec.Meta(max_length=MAX_LISTED // 8)] = b""


class ReconcileMessage(msgspec.Struct, frozen=True, array_like=True):
    """A reconciliation message: consecutive ranges from the empty string to the end."""

    ranges: Annotated[tuple[Range, ...], msgspec.Meta(max_length=MAX_RANGES)]


class Reconcile(msgspec.Struct, frozen=True, tag_field="kind", tag="reconcile"):
    """Either way, protocol 2: one message of the set reconciliation."""

    message: ReconcileMessage


class Forgets(msgspec.Struct, frozen=True, tag_field="kind", tag="forgets"):
    """Either way, protocol 2, after reconciling: tombstones the peer lacks."""

    tombstones: Annotated[tuple[Tombstone, ...], msgspec.Meta(max_length=MAX_BATCH_SIZE)]


class Done(msgspec.Struct, frozen=True, tag_field="kind", tag="done"):
    """Last frame of a complete stream."""


class StreamError(msgspec.Struct, frozen=True, tag_field="kind", tag="error"):
    """The sender failed mid-stream; nothing more follows."""

    message: Message


Batch: TypeAlias = MemoryBatch | FactBatch
StreamFrame: TypeAlias = Meta | MemoryBatch | FactBatch | Done | StreamError
Frame: TypeAlias = (Hello | Request | Response | Meta | MemoryBatch | FactBatch | EncodedBatch | Done | StreamError | Ack
                    | Reconcile | Forgets)

_FRAME_TYPES: Final = (Hello, Request, Response, Meta, MemoryBatch, FactBatch, EncodedBatch, Done, StreamError, Ack,
                       Reconcile, Forgets)


# Codec -----------------------------------------------------------------------


class _Probe(msgspec.Struct):
    """The tag fields of any frame; everything else is skipped unread."""

    method: str | None = None
    kind: str | None = None
    dataset: str | None = None
    status: int | None = None


_probe_decoder: Final = msgspec.json.Decoder(_Probe)
_hello_decoder: Final = msgspec.json.Decoder(Hello)
_request_decoder: Final = msgspec.json.Decoder(Request)
_response_decoder: Final = msgspec.json.Decoder(Response)
_meta_decoder: Final = msgspec.json.Decoder(Meta)
_done_decoder: Final = msgspec.json.Decoder(Done)
_error_decoder: Final = msgspec.json.Decoder(StreamError)
_ack_decoder: Final = msgspec.json.Decoder(Ack)
_encoder: Final = msgspec.json.Encoder()


#: The most dimensions a vector beside a batch may have.
MAX_VECTOR_DIMENSIONS: Final = 8192


class _RawBatch(msgspec.Struct, frozen=True):
    """A batch frame with its records still undecoded, so one bad record does not fail the frame."""

    kind: Literal["batch"]
    dataset: str
    seq: Seq
    records: Annotated[tuple[msgspec.Raw, ...], msgspec.Meta(max_length=MAX_BATCH_SIZE)]
    vectors: Annotated[tuple[Annotated[bytes, msgspec.Meta(max_length=4 * MAX_VECTOR_DIMENSIONS)] | None, ...],
                       msgspec.Meta(max_length=MAX_BATCH_SIZE)] = ()
    model: ModelField = ""


_raw_batch_decoder: Final = msgspec.json.Decoder(_RawBatch)
_record_decoders: Final = {
    "memories": (MemoryBatch, msgspec.json.Decoder(MemoryRecord)),
    "facts": (FactBatch, msgspec.json.Decoder(FactRecord)),
}


class _BatchDecoder:
    """Decodes a batch frame record by record; records our schema refuses are counted, not fatal."""

    def decode(self, raw: bytes | bytearray) -> MemoryBatch | FactBatch:
        return self.build(_raw_batch_decoder.decode(raw))

    def build(self, frame: _RawBatch) -> MemoryBatch | FactBatch:
        batch_type, record_decoder = _record_decoders[frame.dataset]
        if frame.vectors and (frame.dataset != "memories" or len(frame.vectors) != len(frame.records)
                              or not frame.model):
            raise msgspec.ValidationError("a batch's vectors must be one per memory record, with their model")
        records, refusals, refused, vectors = [], [], 0, []
        now = time.time()
        for n, record in enumerate(frame.records, start=1):
            try:
                decoded = record_decoder.decode(record)
                ahead = dated_ahead(decoded, now)
                if ahead:
                    raise ValueError(ahead)
                records.append(decoded)
            except (msgspec.DecodeError, ValueError) as e:
                # A ValidationError (a DecodeError) or a UnicodeError msgspec let through.
                refused += 1
                if len(refusals) < MAX_REFUSAL_REASONS:
                    refusals.append(_one_line(f"{frame.dataset} record {n} of batch {frame.seq}: {e}"))
            else:
                if frame.vectors:
                    vectors.append(frame.vectors[n - 1])
        extra = {"vectors": tuple(vectors), "model": frame.model} if frame.vectors else {}
        return batch_type(dataset=frame.dataset, seq=frame.seq, records=tuple(records), refused=refused,
                          refusals=tuple(refusals), **extra)

#: Frame name (for messages) and decoder, by the value of its tag field.
_BY_METHOD: Final = {
    "HELLO": ("HELLO", _hello_decoder),
    "GET": ("request", _request_decoder),
    "POST": ("request", _request_decoder),
}
_BY_KIND: Final = {
    "meta": ("meta", _meta_decoder),
    "done": ("done", _done_decoder),
    "error": ("error", _error_decoder),
    "ack": ("ack", _ack_decoder),
    "reconcile": ("reconcile", msgspec.json.Decoder(Reconcile)),
    "forgets": ("forgets", msgspec.json.Decoder(Forgets)),
}
_BY_DATASET: Final = {
    "memories": ("batch", _BatchDecoder()),
    "facts": ("batch", _BatchDecoder()),
}

_MAX_MESSAGE = 300


def decode_frame(data: bytes | bytearray | memoryview | str, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode and validate one frame from a peer.

    Args:
        data: the payload of one WebSocket message, text or binary.
        max_bytes: the largest frame accepted (:data:`MAX_FRAME_BYTES`, or
            :data:`MAX_PLAINTEXT_FRAME_BYTES` in the plaintext mode).

    Returns:
        The frame, validated. A batch keeps the records our schema accepts and
        counts the others in ``refused``.

    Raises:
        ProtocolError: the input is not a frame we accept; the message says why
            on one line.
    """
    raw = _utf8_bytes(data, max_bytes)
    probe = _decode("frame", _probe_decoder, raw)
    name, decoder = _pick_decoder(probe)
    return _decode(f"{name} frame", decoder, raw)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as SPEC's JSON (send it as a WebSocket text message).

    Raises:
        TypeError: ``frame`` is not a wire frame (a bug in the caller).
    """
    if not isinstance(frame, _FRAME_TYPES):
        raise TypeError(f"not a wire frame: {type(frame).__name__}")
    if isinstance(frame, (MemoryBatch, FactBatch)) and (frame.refused or frame.refusals):
        frame = msgspec.structs.replace(frame, refused=0, refusals=())  # local bookkeeping, never sent
    return _encoder.encode(frame)


# A memory batch with vectors, sealed (protocol 2): its JSON without the
# vectors, then the vectors raw, which in JSON would be base64 (a third more,
# and a decode per vector):
#
#   u32 json_length | JSON | u32 dimensions | bitmap: a bit per record, 1 = a vector follows
#   | present × dimensions little-endian float32, in record order
_VECTOR_HEAD: Final = struct.Struct("<I")


def pack_vector_batch(frame: MemoryBatch | EncodedBatch) -> bytes:
    """The binary form of a memory batch with vectors (see above); its JSON is :func:`encode_frame`'s."""
    vectors = frame.vectors
    body = encode_frame(msgspec.structs.replace(frame, vectors=()))
    sizes = {len(v) for v in vectors if v is not None}
    if len(sizes) > 1 or len(vectors) != len(frame.records) or any(n % 4 for n in sizes):
        raise ValueError("a batch's vectors must be one per record, all of one float32 size")
    bitmap = bytearray((len(vectors) + 7) // 8)
    for n, v in enumerate(vectors):
        if v is not None:
            bitmap[n // 8] |= 1 << (n % 8)
    dimensions = sizes.pop() // 4 if sizes else 0
    return b"".join((_VECTOR_HEAD.pack(len(body)), body, _VECTOR_HEAD.pack(dimensions), bytes(bitmap),
                     *(v for v in vectors if v is not None)))


def unpack_vector_batch(payload: bytes | bytearray | memoryview) -> MemoryBatch:
    """A memory batch from :func:`pack_vector_batch`'s form, validated as a JSON batch is,
    the vectors aligned with the records kept. Raises ProtocolError on anything else."""
    view = memoryview(payload)
    head = _VECTOR_HEAD.size
    if len(view) < 2 * head:
        raise ProtocolError("vector batch frame is truncated")
    (json_length,) = _VECTOR_HEAD.unpack_from(view, 0)
    if json_length > len(view) - 2 * head:
        raise ProtocolError("vector batch frame is truncated")
    body = view[head:head + json_length]
    (dimensions,) = _VECTOR_HEAD.unpack_from(view, head + json_length)
    if not 1 <= dimensions <= MAX_VECTOR_DIMENSIONS:
        raise ProtocolError(f"vector batch frame: {dimensions} dimensions is not a vector size we accept")
    probe = _decode("frame", _raw_batch_decoder, _utf8_bytes(body, MAX_FRAME_BYTES))
    count = len(probe.records)
    start = 2 * head + json_length
    bitmap = view[start:start + (count + 7) // 8]
    present = sum(bin(b).count("1") for b in bitmap)
    size = 4 * dimensions
    rest = view[start + len(bitmap):]
    if len(bitmap) != (count + 7) // 8 or len(rest) != present * size or (count % 8 and bitmap[-1] >> (count % 8)):
        raise ProtocolError("vector batch frame: its vectors do not match its records")
    if probe.dataset != "memories" or not probe.model or probe.vectors:
        raise ProtocolError("vector batch frame: only memories carry vectors, once, with their model")
    vectors: list[bytes | None] = []
    offset = 0
    for n in range(count):
        if bitmap[n // 8] >> (n % 8) & 1:
            vectors.append(bytes(rest[offset:offset + size]))
            offset += size
        else:
            vectors.append(None)
    try:
        return _BatchDecoder().build(msgspec.structs.replace(probe, vectors=tuple(vectors)))
    except (msgspec.DecodeError, ValueError) as e:
        raise ProtocolError(_one_line(f"bad vector batch frame: {e}")) from None


#: Bytes of a frame checked for UTF-8 at a time: the check never holds a
#: decoded copy of a whole (up to 256 MiB) frame.
_UTF8_SLICE = 1 << 20


def check_utf8(data: bytes | bytearray | memoryview) -> None:
    """Raise ProtocolError unless `data` is valid UTF-8, in slices (memory stays flat)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise ProtocolError(f"frame is not valid UTF-8 text (bad byte near offset {start + e.start})") from None


def _utf8_bytes(data: object, max_bytes: int) -> bytes | bytearray:
    """The frame as UTF-8 bytes, checked for size and encoding before parsing."""
    if isinstance(data, str):
        if len(data) > max_bytes:  # each char is at least one byte
            raise too_large(len(data), max_bytes)
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("frame is not valid UTF-8 text (lone surrogate)") from None
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"frame must be bytes or text, not {type(data).__name__}")
    if isinstance(data, memoryview):
        data = data.tobytes()
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    # msgspec skips the values of fields it does not read without checking
    # their UTF-8, so validate the whole frame once here.
    check_utf8(data)
    return data


def too_large(size: int, max_bytes: int) -> ProtocolError:
    """The error for a frame over the limit, naming both."""
    return ProtocolError(f"frame of {size:,} bytes is larger than the limit of {max_bytes:,} bytes ({max_bytes // 2**20} MiB)")


def _pick_decoder(probe: _Probe) -> tuple[str, msgspec.json.Decoder]:
    if probe.method is not None and probe.kind is not None:
        raise ProtocolError("frame has both a method and a kind")
    if probe.method is not None:
        try:
            return _BY_METHOD[probe.method]
        except KeyError:
            raise ProtocolError(f"unknown method {_short(probe.method)}") from None
    if probe.kind == "batch":
        if probe.dataset is None:
            raise ProtocolError("batch frame has no dataset")
        try:
            return _BY_DATASET[probe.dataset]
        except KeyError:
            raise ProtocolError(f"unknown dataset {_short(probe.dataset)}") from None
    if probe.kind is not None:
        try:
            return _BY_KIND[probe.kind]
        except KeyError:
            raise ProtocolError(f"unknown frame kind {_short(probe.kind)}") from None
    if probe.status is not None:
        return "response", _response_decoder
    raise ProtocolError("frame has no method, kind or status")


def _decode(what: str, decoder: msgspec.json.Decoder, raw: bytes | bytearray) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as e:
        if what == "frame" and str(e).startswith("Expected `object`, got "):
            raise ProtocolError(_one_line(f"frame is not a JSON object: {e}")) from None
        raise ProtocolError(_one_line(f"bad {what}: {e}")) from None
    except msgspec.DecodeError as e:
        raise ProtocolError(_one_line(f"frame is not valid JSON: {e}")) from None
    except RecursionError:
        raise ProtocolError("frame is nested too deeply") from None
    except ValueError as e:  # a UnicodeError msgspec lets through
        raise ProtocolError(_one_line(f"bad {what}: {e}")) from None


def _short(value: object) -> str:
    """A peer-supplied value, shortened for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
