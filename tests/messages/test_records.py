"""Records: SPEC's ids, finalize, and what the decoders accept."""

from __future__ import annotations

import hashlib
import random
import uuid

import msgspec
import pytest

from imprint.messages.records import (
    MAX_RECORD_BYTES,
    FactRecord,
    MemoryRecord,
    Tags,
    content_hash,
    fact_decoder,
    finalize_memory,
    memory_decoder,
    memory_id,
    memory_to_payload,
    point_id,
    replaces,
    winning_copies,
)

# Computed once by hand with SPEC's formula:
#   sha256("default::The cat sat on the mat").hexdigest()[:16]
#   uuid5(NAMESPACE_URL, "imprint::efc919b2c49aff44")
CAT_ID = "efc919b2c49aff44"
CAT_POINT = "654d0cc5-674f-5146-93db-5c5e51fdcab4"


def test_memory_id_matches_a_hand_computed_value() -> None:
    assert memory_id("default", "", "The cat sat on the mat") == CAT_ID
    assert point_id(CAT_ID) == CAT_POINT


@pytest.mark.parametrize(
    ("project", "source", "content"),
    [
        ("proj", "notes/a.md", "Ünïcødé — content ✓"),
        ("p:q", "s:t", "colons in project and source"),
        ("", "", "x"),
    ],
)
def test_memory_id_follows_the_spec_formula(project: str, source: str, content: str) -> None:
    expected = hashlib.sha256(f"{project}:{source}:{content.strip()[:200]}".encode("utf-8")).hexdigest()[:16]
    assert memory_id(project, source, content) == expected
    assert len(expected) == 16 and int(expected, 16) >= 0
    assert point_id(expected) == str(uuid.uuid5(uuid.NAMESPACE_URL, "imprint::" + expected))


def test_memory_id_strips_then_keeps_the_first_200_characters() -> None:
    base = "a" * 200
    assert memory_id("p", "s", f"  \n{base}\t ") == memory_id("p", "s", base)
    assert memory_id("p", "s", base + " tail that is ignored") == memory_id("p", "s", base)
    assert memory_id("p", "s", base[:-1] + "b") != memory_id("p", "s", base)
    assert memory_id("p", "s", "text") != memory_id("q", "s", "text") != memory_id("p", "t", "text")


def test_finalize_fills_id_and_missing_timestamp() -> None:
    record = finalize_memory(MemoryRecord(content="The cat sat on the mat"), now=1234.5)
    assert (record.id, record.timestamp) == (CAT_ID, 1234.5)


def test_finalize_keeps_a_given_timestamp_and_replaces_a_wrong_id() -> None:
    given = MemoryRecord(id="0000000000000000", content="The cat sat on the mat", timestamp=42.0)
    record = finalize_memory(given, now=1234.5)
    assert record.id == CAT_ID
    assert record.timestamp == 42.0
    assert msgspec.structs.replace(record, id=given.id) == given  # nothing else changed


def test_finalize_of_a_final_record_is_the_same_record() -> None:
    record = finalize_memory(MemoryRecord(content="already final", timestamp=7.0))
    assert finalize_memory(record, now=99.0) is record


def test_decoder_accepts_spec_fields_and_defaults_the_rest() -> None:
    line = (
        b'{"id":"abc","content":"hello","project":"p","type":"doc","source":"a.md","chunk_index":2,'
        b'"source_mtime":1.5,"timestamp":10,"tags":{"lang":"en","domain":["x"],"topics":["t1","t2"]},'
        b'"vector":[0.1,0.2]}'
    )
    record = memory_decoder.decode(line)
    assert record.content == "hello" and record.chunk_index == 2 and record.timestamp == 10.0
    assert record.tags == Tags(lang="en", domain=("x",), topics=("t1", "t2"))
    minimal = memory_decoder.decode(b'{"content":"only content"}')
    assert (minimal.project, minimal.type, minimal.source, minimal.tags) == ("default", "note", "", Tags())
    # the payload (and wire form) is SPEC's field list, without vectors
    assert set(memory_to_payload(record)) == {
        "id", "content", "project", "type", "tags", "source", "chunk_index", "source_mtime", "timestamp"
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"content":""}', "content is empty"),
        (b'{"content":"  \\n\\t "}', "content is empty"),
        (b'{"project":"p"}', "missing required field `content`"),
        (b'{"content":5}', "Expected `str`, got `int`"),
        (b'{"content":"x","chunk_index":"2"}', "Expected `int`, got `str`"),
        (b'{"content":"x","tags":{"domain":"notalist"}}', "Expected `array`"),
        (b'["content","x"]', "Expected `object`"),
        (b"not json", "malformed"),
    ],
)
def test_decoder_rejects_wrong_shapes(line: bytes, message: str) -> None:
    with pytest.raises(msgspec.DecodeError, match=message):
        memory_decoder.decode(line)


def test_content_up_to_1_mib_is_accepted_and_over_is_rejected() -> None:
    at_limit = "a" * MAX_RECORD_BYTES
    assert memory_decoder.decode(msgspec.json.encode({"content": at_limit})).content == at_limit
    with pytest.raises(msgspec.ValidationError, match="larger than 1 MiB"):
        memory_decoder.decode(msgspec.json.encode({"content": at_limit + "a"}))
    # the limit is in UTF-8 bytes, not characters
    wide = "é" * (MAX_RECORD_BYTES // 2 + 1)
    assert len(wide) < MAX_RECORD_BYTES
    with pytest.raises(msgspec.ValidationError, match="larger than 1 MiB"):
        memory_decoder.decode(msgspec.json.encode({"content": wide}))


def test_fact_decoder_and_identity() -> None:
    record = fact_decoder.decode(b'{"subject":"a","predicate":"b","object":"c","valid_from":5,"ended":null,"source":"s"}')
    assert record == FactRecord(subject="a", predicate="b", object="c", valid_from=5.0, source="s")
    assert record.identity == ("a", "b", "c", 5.0)
    with pytest.raises(msgspec.ValidationError, match="predicate is empty"):
        fact_decoder.decode(b'{"subject":"a","predicate":" ","object":"c","valid_from":5}')
    with pytest.raises(msgspec.ValidationError, match="Expected `float \\| null`"):
        fact_decoder.decode(b'{"subject":"a","predicate":"b","object":"c","valid_from":5,"ended":"soon"}')
    with pytest.raises(msgspec.ValidationError, match="missing required field `valid_from`"):
        fact_decoder.decode(b'{"subject":"a","predicate":"b","object":"c"}')


def test_records_are_frozen() -> None:
    record = MemoryRecord(content="x")
    with pytest.raises(AttributeError):
        record.content = "y"  # type: ignore[misc]


def test_merge_rule_between_two_copies_of_one_memory() -> None:
    a, b = content_hash("same text"), content_hash("the edited text")
    assert a != b and len(a) == 16
    # same text: the earliest copy wins, whichever way round
    assert replaces((50.0, a), (100.0, a)) and not replaces((100.0, a), (50.0, a))
    # another text under the id (an edit past character 200): the newer one wins
    assert replaces((200.0, b), (100.0, a)) and not replaces((100.0, a), (200.0, b))
    # the same time with two texts: one of them, the same on every machine
    assert replaces((100.0, max(a, b)), (100.0, min(a, b))) != replaces((100.0, min(a, b)), (100.0, max(a, b)))
    # a copy without a time, or the very same copy, replaces nothing
    assert not replaces((0.0, b), (100.0, a)) and not replaces((100.0, a), (100.0, a))


def test_an_edit_past_character_200_keeps_the_id_and_wins_in_a_batch() -> None:
    head = "x" * 200
    first = finalize_memory(MemoryRecord(content=head + " first ending", timestamp=100.0))
    edit = finalize_memory(MemoryRecord(content=head + " edited ending", timestamp=300.0))
    again = finalize_memory(MemoryRecord(content=head + " first ending", timestamp=50.0))
    assert first.id == edit.id == again.id
    assert winning_copies((first, edit), (first.id,)) == (edit,)
    assert winning_copies((edit, first), (first.id,)) == (edit,)
    assert winning_copies((first, again), (first.id,)) == (again,)


def test_a_typed_or_imported_memory_dated_ahead_is_refused_and_a_day_of_skew_is_not() -> None:
    import time

    import msgspec
    import pytest

    from imprint.messages.records import MAX_CLOCK_SKEW, decode_memory_input

    now = time.time()
    assert decode_memory_input(msgspec.json.encode({"content": "x", "timestamp": now + MAX_CLOCK_SKEW - 60}))
    with pytest.raises(msgspec.ValidationError, match=r"ahead of this machine's clock .* at `\$\.timestamp`"):
        decode_memory_input(msgspec.json.encode({"content": "x", "timestamp": 32503680000.0}))
    # a client writing milliseconds instead of seconds is caught the same way
    with pytest.raises(msgspec.ValidationError, match="ahead"):
        decode_memory_input(msgspec.json.encode({"content": "x", "timestamp": now * 1000}))


def test_point_ids_are_exactly_uuid5_for_any_id() -> None:
    """point_id computes SPEC's uuid5 itself (for speed): it must never differ from uuid.uuid5."""
    rng = random.Random(26)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(5000)] + ["", "not-hex é ✓", "0" * 16, "f" * 16]
    assert [point_id(i) for i in ids] == [str(uuid.uuid5(uuid.NAMESPACE_URL, "imprint::" + i)) for i in ids]
