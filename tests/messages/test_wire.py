"""The wire codec: exact SPEC JSON, round trips, and every bad input → ProtocolError."""

from __future__ import annotations

import json
import re
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imprint.errors import ProtocolError
from imprint.messages.records import MAX_RECORD_BYTES, FactRecord, MemoryRecord, Tags
from imprint.messages.wire import (
    INVALID_PIN,
    MAX_BATCH_SIZE,
    MAX_FRAME_BYTES,
    REJECTED_BY_USER,
    DatasetCounts,
    Done,
    EncodedBatch,
    FactBatch,
    FactStats,
    Hello,
    MemoryBatch,
    MemoryStats,
    Meta,
    Request,
    RequestBody,
    Response,
    StreamError,
    SyncStats,
    decode_frame,
    encode_frame,
)

MEMORY = MemoryRecord(
    id="0123456789abcdef",
    content="Qdrant stores one vector per memory.",
    project="imprint",
    type="decision",
    tags=Tags(lang="en", layer="infra", kind="note", domain=("db",), topics=("qdrant", "vectors")),
    source="notes.md",
    chunk_index=2,
    source_mtime=1700000000.5,
    timestamp=1700000100.25,
)
MEMORY_JSON = {
    "id": "0123456789abcdef",
    "content": "Qdrant stores one vector per memory.",
    "project": "imprint",
    "type": "decision",
    "tags": {"lang": "en", "layer": "infra", "kind": "note", "domain": ["db"], "topics": ["qdrant", "vectors"]},
    "source": "notes.md",
    "chunk_index": 2,
    "source_mtime": 1700000000.5,
    "timestamp": 1700000100.25,
}
FACT = FactRecord(subject="alice", predicate="works_on", object="imprint", valid_from=1700000000.0, source="cli")
FACT_JSON = {
    "subject": "alice",
    "predicate": "works_on",
    "object": "imprint",
    "valid_from": 1700000000.0,
    "ended": None,
    "source": "cli",
}
STATS = SyncStats(memories=MemoryStats(inserted=3, skipped=9), facts=FactStats(inserted=0, skipped=4))

# Each frame with the exact JSON object SPEC (plaintext form) gives for it.
SPEC_FRAMES = [
    (
        Hello(hostname="laptop", user="ana", os="Linux", fingerprint="0a1b2c3d", pin="Ab3dE5g7"),
        {
            "method": "HELLO", "hostname": "laptop", "user": "ana", "os": "Linux",
            "fingerprint": "0a1b2c3d", "pin": "Ab3dE5g7",
        },  # fmt: skip
    ),
    (Response.ok(), {"status": 200, "body": "ok"}),
    (Response.bad_request("expected HELLO"), {"status": 400, "body": "expected HELLO"}),
    (Response.forbidden(INVALID_PIN), {"status": 403, "body": "invalid PIN"}),
    (Response.forbidden(REJECTED_BY_USER), {"status": 403, "body": "rejected by user"}),
    (Response.not_found(), {"status": 404, "body": "unknown path"}),
    (
        Response.with_stats(STATS),
        {
            "status": 200,
            "body": {"memories": {"inserted": 3, "skipped": 9}, "facts": {"inserted": 0, "skipped": 4}},
        },
    ),
    (Request.pull(), {"method": "GET", "path": "/sync/pull", "body": {"batch_size": 500}}),
    (Request.push(batch_size=200), {"method": "POST", "path": "/sync/push", "body": {"batch_size": 200}}),
    (Meta(datasets=DatasetCounts(memories=12, facts=4)), {"kind": "meta", "datasets": {"memories": 12, "facts": 4}}),
    (
        MemoryBatch(dataset="memories", seq=1, records=(MEMORY,)),
        {"kind": "batch", "dataset": "memories", "seq": 1, "records": [MEMORY_JSON]},
    ),
    (
        FactBatch(dataset="facts", seq=3, records=(FACT,)),
        {"kind": "batch", "dataset": "facts", "seq": 3, "records": [FACT_JSON]},
    ),
    (Done(), {"kind": "done"}),
    (StreamError(message="disk full"), {"kind": "error", "message": "disk full"}),
]

EXTRA_FRAMES = [
    Hello(hostname="h", user="u", os="o", fingerprint="ffffffff", public_key="pk", signature="sig"),
    Hello(hostname="h", user="u", os="o", fingerprint="00000000"),
    Meta(datasets=DatasetCounts(memories=0, facts=0), vectors=True),
    FactBatch(dataset="facts", seq=1, records=(FactRecord(subject="s", predicate="p", object="o", valid_from=1.0, ended=2.5),)),
    Response.with_stats(SyncStats(facts=FactStats(inserted=1, ended=2))),
]


def _bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _batch(dataset: str = "memories", seq: object = 1, records: object = None) -> dict:
    if records is None:
        records = [MEMORY_JSON] if dataset == "memories" else [FACT_JSON]
    return {"kind": "batch", "dataset": dataset, "seq": seq, "records": records}


def _raises(data: object, match: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        decode_frame(data)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert len(message) <= 300
    return info.value


# Shapes and round trips -------------------------------------------------------


@pytest.mark.parametrize(("frame", "expected"), SPEC_FRAMES, ids=lambda v: type(v).__name__)
def test_encoding_is_exactly_spec_json(frame, expected):
    assert json.loads(encode_frame(frame)) == expected


@pytest.mark.parametrize(("frame", "expected"), SPEC_FRAMES, ids=lambda v: type(v).__name__)
def test_spec_json_decodes_to_frame(frame, expected):
    assert decode_frame(_bytes(expected)) == frame
    assert decode_frame(json.dumps(expected)) == frame  # text frames too


@pytest.mark.parametrize("frame", [f for f, _ in SPEC_FRAMES] + EXTRA_FRAMES, ids=lambda v: type(v).__name__)
def test_round_trip(frame):
    data = encode_frame(frame)
    assert isinstance(data, bytes)
    decoded = decode_frame(data)
    assert type(decoded) is type(frame)
    assert decoded == frame
    assert decode_frame(bytearray(data)) == frame
    assert decode_frame(memoryview(data)) == frame


def test_hello_encryption_fields_appear_only_when_set():
    hello = Hello(hostname="h", user="u", os="o", fingerprint="ffffffff", pin="x", public_key="pk", signature="sig")
    assert json.loads(encode_frame(hello)) == {
        "method": "HELLO", "hostname": "h", "user": "u", "os": "o",
        "fingerprint": "ffffffff", "pin": "x", "public_key": "pk", "signature": "sig",
    }  # fmt: skip


def test_meta_vectors_flag_encodes_only_when_true():
    meta = Meta(datasets=DatasetCounts(memories=1, facts=2), vectors=True)
    assert json.loads(encode_frame(meta)) == {"kind": "meta", "datasets": {"memories": 1, "facts": 2}, "vectors": True}


def test_frames_are_frozen_and_hashable():
    frame = Request.pull()
    with pytest.raises(AttributeError):
        frame.path = "/x"  # type: ignore[misc]
    assert hash(frame) == hash(Request.pull())


def test_request_body_defaults_to_500():
    assert decode_frame(b'{"method":"GET","path":"/sync/pull"}') == Request("GET", "/sync/pull", RequestBody(500))
    assert decode_frame(b'{"method":"GET","path":"/sync/pull","body":{}}').body.batch_size == 500
    assert decode_frame(encode_frame(Request.pull(batch_size=MAX_BATCH_SIZE))).body.batch_size == MAX_BATCH_SIZE


def test_unknown_fields_are_ignored_for_newer_peers():
    frame = decode_frame(b'{"kind":"done","since":"v2"}')
    assert frame == Done()


def test_memory_record_vector_from_the_original_is_ignored():
    record = dict(MEMORY_JSON, vector=[0.1, -0.2, 0.3])
    frame = decode_frame(_bytes({"kind": "meta", "datasets": {"memories": 1, "facts": 0}, "vectors": True}))
    assert frame == Meta(datasets=DatasetCounts(memories=1, facts=0), vectors=True)
    batch = decode_frame(_bytes(_batch(records=[record])))
    assert batch == MemoryBatch(dataset="memories", seq=1, records=(MEMORY,))
    assert "vector" not in json.loads(encode_frame(batch))["records"][0]


def test_memory_record_defaults_fill_missing_fields():
    batch = decode_frame(_bytes(_batch(records=[{"content": "just text"}])))
    assert batch == MemoryBatch(dataset="memories", seq=1, records=(MemoryRecord(content="just text"),))


def test_integer_times_decode_as_floats():
    batch = decode_frame(_bytes(_batch("facts", records=[dict(FACT_JSON, valid_from=1700000000, ended=1700000005)])))
    assert batch.records[0].valid_from == 1700000000.0
    assert batch.records[0].ended == 1700000005.0


def test_stats_helpers():
    assert Response.with_stats(STATS).stats() == STATS
    partial = decode_frame(_bytes({"status": 200, "body": {"memories": {"inserted": 1, "skipped": 2}}}))
    assert partial.stats() == SyncStats(memories=MemoryStats(inserted=1, skipped=2))
    ended = SyncStats(facts=FactStats(inserted=1, skipped=0, ended=2))
    assert ended.to_body() == {
        "memories": {"inserted": 0, "skipped": 0},
        "facts": {"inserted": 1, "skipped": 0, "ended": 2},
    }
    assert SyncStats.from_body(ended.to_body()) == ended


@pytest.mark.parametrize(
    "response",
    [
        Response.ok(),
        Response.not_found(),
        Response(200, {"memories": {"inserted": "3"}}),
        Response(200, {"memories": []}),
    ],
)
def test_stats_of_a_non_stats_response_is_a_protocol_error(response):
    with pytest.raises(ProtocolError):
        response.stats()


def test_encode_rejects_non_frames():
    with pytest.raises(TypeError):
        encode_frame({"kind": "done"})  # type: ignore[arg-type]


# Bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b'{"kind":"done"', "not valid JSON"),
        (b'{"kind":"done"} trailing', "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'[{"kind":"done"}]', "not a JSON object"),
        (b'"done"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{}", "no method, kind or status"),
        (b'{"kind":"bogus"}', "unknown frame kind 'bogus'"),
        (b'{"method":"DELETE","path":"/sync/pull"}', "unknown method 'DELETE'"),
        (b'{"method":"hello"}', "unknown method 'hello'"),
        (b'{"kind":"batch","seq":1,"records":[]}', "batch frame has no dataset"),
        (b'{"kind":5}', r"bad frame: .*`\$\.kind`"),
        (b'{"status":"200","body":"ok"}', r"bad frame: .*`\$\.status`"),
        (b'{"method":"HELLO","kind":"done"}', "both a method and a kind"),
    ],
)
def test_malformed_frames(data, match):
    _raises(data, match)


def test_unknown_dataset():
    _raises(_bytes(_batch("vectors", records=[])), "unknown dataset 'vectors'")


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (_batch(seq=0), r"bad batch frame: Expected `int` >= 1 - at `\$\.seq`"),
        (_batch(seq=-3), r"`\$\.seq`"),
        (_batch(seq="1"), r"Expected `int`, got `str` - at `\$\.seq`"),
        (_batch(seq=1.5), r"`\$\.seq`"),
        (_batch(records={"content": "x"}), r"`\$\.records`"),
        (_batch(records=[MEMORY_JSON] * (MAX_BATCH_SIZE + 1)), r"`\$\.records`"),
        ({"kind": "meta"}, "missing required field `datasets`"),
        ({"kind": "meta", "datasets": {"memories": 1}}, r"missing required field `facts` - at `\$\.datasets`"),
        ({"kind": "meta", "datasets": {"memories": -1, "facts": 0}}, r"`\$\.datasets\.memories`"),
        ({"kind": "meta", "datasets": {"memories": 1, "facts": 0}, "vectors": "yes"}, r"`\$\.vectors`"),
        ({"kind": "error"}, "missing required field `message`"),
        ({"kind": "error", "message": None}, r"`\$\.message`"),
        ({"status": 200, "body": 5}, r"`\$\.body`"),
        ({"status": 99, "body": "ok"}, r"`\$\.status`"),
        ({"status": 10**30, "body": "ok"}, r"`\$\.status`"),
        ({"method": "GET", "path": "/sync/pull", "body": {"batch_size": 0}}, r"`\$\.body\.batch_size`"),
        ({"method": "GET", "path": "/sync/pull", "body": {"batch_size": 10**9}}, r"`\$\.body\.batch_size`"),
        ({"method": "GET", "path": 1}, r"`\$\.path`"),
        ({"method": "GET"}, "missing required field `path`"),
        ({"method": "HELLO", "hostname": "h", "user": "u", "os": "o"}, "missing required field `fingerprint`"),
        (
            {"method": "HELLO", "hostname": "h", "user": "u", "os": "o", "fingerprint": "0A1B2C3D"},
            r"`\$\.fingerprint`",
        ),
        (
            {"method": "HELLO", "hostname": "h", "user": "u", "os": "o", "fingerprint": "0a1b2c3"},
            r"`\$\.fingerprint`",
        ),
        (
            {"method": "HELLO", "hostname": "h", "user": "u", "os": "o", "fingerprint": "0a1b2c3d", "pin": "x" * 65},
            r"`\$\.pin`",
        ),
        (
            {"method": "HELLO", "hostname": "h" * 256, "user": "u", "os": "o", "fingerprint": "0a1b2c3d"},
            r"`\$\.hostname`",
        ),
    ],
)
def test_invalid_frames(frame, match):
    _raises(_bytes(frame), match)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_batch(records=[MEMORY_JSON, MEMORY_JSON, MEMORY_JSON, dict(MEMORY_JSON, content=7)]),
         r"^memories record 4 of batch 1: Expected `str`, got `int` - at `\$\.content`$"),
        (_batch(records=[{"project": "p"}]), r"missing required field `content`"),
        # Imprint's own clients store these; we refuse them one by one, never the whole frame.
        (_batch(records=[dict(MEMORY_JSON, content="   ")]), r"content is empty"),
        (_batch(records=[dict(MEMORY_JSON, content="x" * (1024 * 1024 + 1))]), r"content is larger than 1 MiB"),
        (_batch(records=[dict(MEMORY_JSON, timestamp=-1.0)]), r"`\$\.timestamp`"),
        (_batch(records=[dict(MEMORY_JSON, tags={"domain": "db"})]), r"`\$\.tags\.domain`"),
        (_batch("facts", records=[dict(FACT_JSON, valid_from="yesterday")]), r"`\$\.valid_from`"),
        (_batch("facts", records=[dict(FACT_JSON, object="")]), r"object is empty"),
        (_batch("facts", records=[MEMORY_JSON]), r"missing required field"),
        # Dated more than a day ahead of our clock: it would win every merge, for good.
        (_batch(records=[dict(MEMORY_JSON, timestamp=32503680000.0)]), r"dated [\d,]+ days ahead of this machine's clock"),
        (_batch("facts", records=[dict(FACT_JSON, ended=time.time() + 3 * 86400)]), r"dated 3 days ahead"),
    ],
)
def test_a_record_our_schema_refuses_is_counted_not_fatal(frame, reason):
    batch = decode_frame(_bytes(frame))
    assert batch.refused == 1
    [why] = batch.refusals
    assert re.search(reason, why), why
    assert batch.size == len(frame["records"]) and len(batch.records) == batch.size - 1
    # Refusals never go back on the wire: the frame we would send is SPEC's shape.
    assert set(msgspec.json.decode(encode_frame(batch))) == {"kind", "dataset", "seq", "records"}


def test_only_the_first_refusal_reasons_are_kept():
    batch = decode_frame(_bytes(_batch(records=[dict(MEMORY_JSON, content=" ")] * 50 + [MEMORY_JSON])))
    assert (batch.refused, len(batch.refusals), len(batch.records)) == (50, 5, 1)


def test_huge_hostname_is_rejected_quickly():
    hello = {"method": "HELLO", "hostname": "h" * 10_000_000, "user": "u", "os": "o", "fingerprint": "0a1b2c3d"}
    data = _bytes(hello)
    start = time.perf_counter()
    _raises(data, r"bad HELLO frame: .*`\$\.hostname`")
    assert time.perf_counter() - start < 1.0


def test_record_content_over_one_mib_is_refused():
    big = "x" * (MAX_RECORD_BYTES + 1)
    assert "larger than 1 MiB" in decode_frame(_bytes(_batch(records=[dict(MEMORY_JSON, content=big)]))).refusals[0]
    # bytes, not characters, count: 2-byte characters past half the limit
    wide = "é" * (MAX_RECORD_BYTES // 2 + 1)
    assert "larger than 1 MiB" in decode_frame(_bytes(_batch(records=[dict(MEMORY_JSON, content=wide)]))).refusals[0]


def test_frame_over_the_size_limit():
    data = b'{"kind":"done","pad":"' + b"x" * MAX_FRAME_BYTES + b'"}'
    _raises(data, f"larger than the limit of {MAX_FRAME_BYTES:,} bytes")
    _raises(data.decode(), "larger than the limit")
    # a text frame under the char limit but over it in UTF-8 bytes
    text = '{"kind":"done","pad":"' + "é" * (MAX_FRAME_BYTES // 2) + '"}'
    _raises(text, "larger than the limit")


def test_frame_just_under_the_size_limit_decodes():
    head, tail = b'{"kind":"done","pad":"', b'"}'
    data = head + b"x" * (MAX_FRAME_BYTES - len(head) - len(tail)) + tail
    assert len(data) == MAX_FRAME_BYTES
    assert decode_frame(data) == Done()


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b'{"kind":"error","message":"\xc3"}',
        b'{"kind":"done","ignored":"\xff"}',  # even in a field nobody reads
        b'{"kind":"done","\xed\xa0\x80":1}',  # an encoded surrogate
    ],
)
def test_invalid_utf8(data):
    _raises(data, "not valid UTF-8")


def test_lone_surrogate_in_text():
    _raises('{"kind":"error","message":"\ud800"}', "not valid UTF-8")


def test_deep_nesting():
    data = b'{"kind":"done","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _raises(data, "nested too deeply")


def test_not_bytes_or_text():
    _raises(12, "bytes or text")
    _raises(None, "bytes or text")


def test_long_peer_values_are_shortened_in_messages():
    error = _raises(_bytes({"kind": "k" * 100_000}), "unknown frame kind")
    assert len(str(error)) < 100


# Fuzz --------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_tag_keys = st.sampled_from(["method", "kind", "dataset", "status", "seq", "records", "datasets", "body", "message"])
_tag_values = st.sampled_from(
    ["HELLO", "GET", "POST", "meta", "batch", "done", "error", "memories", "facts", 200, 1, 0, -1, [], {}, None]
)
_frame_like = st.dictionaries(_tag_keys, _tag_values | _json_values, max_size=6)


def _decodes_or_protocol_error(data: object) -> None:
    try:
        frame = decode_frame(data)  # type: ignore[arg-type]
    except ProtocolError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(frame, (Hello, Request, Response, Meta, MemoryBatch, FactBatch, Done, StreamError))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes(data):
    _decodes_or_protocol_error(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text(data):
    _decodes_or_protocol_error(data)


@settings(max_examples=300, deadline=None)
@given(_frame_like)
def test_fuzz_frame_like_objects(obj):
    _decodes_or_protocol_error(msgspec.json.encode(obj))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([f for f, _ in SPEC_FRAMES]), st.data())
def test_fuzz_mutated_spec_frames(frame, data):
    raw = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _decodes_or_protocol_error(bytes(raw))


def test_vectors_beside_a_batch_stay_aligned_and_must_match_its_records() -> None:
    fp = "0123456789abcdef"
    good = {"content": "kept"}
    frame = {"kind": "batch", "dataset": "memories", "seq": 1, "records": [good, {"content": "  "}, good],
             "vectors": ["AAAA", "BBBB", None], "model": fp}
    batch = decode_frame(json.dumps(frame))
    # the refused record's vector goes with it; the others keep their places
    assert batch.refused == 1 and batch.vectors == (b"\0\0\0", None) and batch.model == fp
    for bad in ({**frame, "vectors": ["AAAA"]},  # not one per record
                {**frame, "model": ""},  # vectors without their model
                {**frame, "model": "not hex"},
                {"kind": "batch", "dataset": "facts", "seq": 1, "records": [], "vectors": ["A"], "model": fp}):
        with pytest.raises(ProtocolError):
            decode_frame(json.dumps(bad))
    # without vectors a batch encodes exactly as before (Imprint's own clients never see the fields)
    plain = MemoryBatch.of(1, (MemoryRecord(content="x"),))
    assert b"vectors" not in encode_frame(plain) and b"model" not in encode_frame(plain)


def _vector_batch(n: int = 10, dims: int = 4) -> tuple[MemoryBatch, list[bytes | None]]:
    import struct as st_

    vectors = [None if i % 3 == 1 else st_.pack(f"<{dims}f", *(float(i + d) for d in range(dims))) for i in range(n)]
    records = tuple(MemoryRecord(content=f"memory {i}") for i in range(n))
    return MemoryBatch(dataset="memories", seq=3, records=records, vectors=tuple(vectors), model="0123456789abcdef"), vectors


def test_a_vector_batch_packs_its_vectors_raw_and_comes_back_equal() -> None:
    from imprint.messages.wire import pack_vector_batch, unpack_vector_batch

    batch, vectors = _vector_batch()
    packed = pack_vector_batch(batch)
    assert unpack_vector_batch(packed) == batch
    # raw float32: no base64 (a third more) for the 7 present vectors of 16 bytes
    assert len(packed) < len(encode_frame(batch)) - 7 * 16 // 3
    # a record the schema refuses leaves with its vector; the others keep theirs
    raws = (msgspec.Raw(b'{"content":"  "}'),) + tuple(msgspec.Raw(msgspec.json.encode(r)) for r in batch.records[1:])
    bad = EncodedBatch(dataset="memories", seq=3, records=raws, vectors=batch.vectors, model=batch.model)
    back = unpack_vector_batch(pack_vector_batch(bad))
    assert back.refused == 1 and back.vectors == tuple(vectors[1:])


@pytest.mark.parametrize("cut", ["truncated", "extra", "bitmap", "dims-zero", "dims-huge", "json-length", "facts",
                                 "no-model", "twice"])
def test_a_hostile_vector_batch_is_a_protocol_error(cut: str) -> None:
    import struct as st_

    from imprint.messages.wire import pack_vector_batch, unpack_vector_batch

    batch, _ = _vector_batch()
    packed = bytearray(pack_vector_batch(batch))
    (json_length,) = st_.unpack_from("<I", packed, 0)
    dims_at = 4 + json_length
    if cut == "truncated":
        packed = packed[:-3]
    elif cut == "extra":
        packed += b"\0" * 16
    elif cut == "bitmap":
        packed[dims_at + 4] ^= 0b10  # record 1 now claims a vector the payload does not hold
    elif cut == "dims-zero":
        st_.pack_into("<I", packed, dims_at, 0)
    elif cut == "dims-huge":
        st_.pack_into("<I", packed, dims_at, 1 << 30)
    elif cut == "json-length":
        st_.pack_into("<I", packed, 0, len(packed))
    else:
        body = json.loads(bytes(packed[4:dims_at]))
        if cut == "facts":
            body.update(dataset="facts", records=[])
        elif cut == "no-model":
            body.pop("model")
        else:
            body["vectors"] = [None] * len(body["records"])
        raw = json.dumps(body).encode()
        packed = st_.pack("<I", len(raw)) + raw + packed[dims_at:]
    with pytest.raises(ProtocolError):
        unpack_vector_batch(bytes(packed))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_vector_batches(data):
    from imprint.messages.wire import pack_vector_batch, unpack_vector_batch

    raw = bytearray(pack_vector_batch(_vector_batch()[0]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        unpack_vector_batch(bytes(raw))
    except ProtocolError:
        pass
