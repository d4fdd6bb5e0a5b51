"""Tests for imprint.protocol.channel: handshake, refusal, and sealed frames, in memory."""

from __future__ import annotations

import base64
import json

import nacl.bindings
import pytest

from imprint.errors import (
    AuthError,
    ChannelExhaustedError,
    InputError,
    ProtocolError,
    SyncError,
    TamperedFrameError,
    UnsupportedVersionError,
)
from imprint.protocol.channel import (
    PROTOCOL_VERSION,
    ChannelSetup,
    SecureChannel,
    first_frame_kind,
    parse_refusal,
    refusal_frame,
)

PIN = "Xk7pQ2mZ"
ROOM = "room-4711"


def handshake(
    consumer_pin: str = PIN,
    provider_pin: str = PIN,
    consumer_room: str = ROOM,
    provider_room: str = ROOM,
    frames: list[bytes] | None = None,
) -> tuple[SecureChannel, SecureChannel]:
    """Run both sides' handshake through an in-memory 'relay'; returns (consumer, provider)."""
    consumer = ChannelSetup(pin=consumer_pin, room=consumer_room, role="consumer")
    provider = ChannelSetup(pin=provider_pin, room=provider_room, role="provider")
    c_pake, p_pake = consumer.start(), provider.start()
    c_confirm, p_confirm = consumer.receive_pake(p_pake), provider.receive_pake(c_pake)
    if frames is not None:
        frames.extend([c_pake, p_pake, c_confirm, p_confirm])
    return consumer.receive_confirm(p_confirm), provider.receive_confirm(c_confirm)


def started(role: str = "provider") -> ChannelSetup:
    setup = ChannelSetup(pin=PIN, room=ROOM, role=role)  # type: ignore[arg-type]
    setup.start()
    return setup


@pytest.fixture
def pair() -> tuple[SecureChannel, SecureChannel]:
    return handshake()


# Handshake ----------------------------------------------------------------------


def test_handshake_agrees_and_round_trips_both_directions(pair):
    consumer, provider = pair
    assert consumer.verification == provider.verification
    assert len(consumer.verification) == len("4f2a-91c0-7d3b")
    assert consumer.transcript == provider.transcript
    assert len(consumer.transcript) == 32
    for i in range(3):
        assert provider.open(consumer.seal(b"c2p %d" % i)) == b"c2p %d" % i
        assert consumer.open(provider.seal(b"p2c %d" % i)) == b"p2c %d" % i
    assert provider.open(consumer.seal(b"")) == b""


def test_sessions_differ_in_keys_and_verification():
    a_consumer, _ = handshake()
    b_consumer, b_provider = handshake()
    assert a_consumer.verification != b_consumer.verification
    assert a_consumer.transcript != b_consumer.transcript
    with pytest.raises(TamperedFrameError):
        b_provider.open(a_consumer.seal(b"cross-session"))


def test_handshake_frames_have_the_documented_shape():
    frames: list[bytes] = []
    handshake(frames=frames)
    c_pake, p_pake, c_confirm, p_confirm = (json.loads(f) for f in frames)
    assert list(c_pake) == ["imprint", "pake"] and c_pake["imprint"] == PROTOCOL_VERSION == 1
    assert len(base64.b64decode(c_pake["pake"])) == 33
    assert list(p_confirm) == ["imprint", "confirm"] and p_confirm["imprint"] == 1
    assert len(base64.b64decode(c_confirm["confirm"])) == 32
    assert c_pake["pake"] != p_pake["pake"]
    assert c_confirm["confirm"] != p_confirm["confirm"]


def test_str_frames_are_accepted_like_bytes():
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    c_pake, p_pake = consumer.start().decode(), provider.start().decode()
    c_confirm = consumer.receive_pake(p_pake).decode()
    p_confirm = provider.receive_pake(c_pake).decode()
    assert consumer.receive_confirm(p_confirm).verification == (
        provider.receive_confirm(c_confirm).verification
    )


def test_wrong_pin_fails_confirmation_on_both_sides():
    consumer = ChannelSetup(pin="Xk7pQ2mY", room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    c_pake, p_pake = consumer.start(), provider.start()
    c_confirm, p_confirm = consumer.receive_pake(p_pake), provider.receive_pake(c_pake)
    for side, frame in ((consumer, p_confirm), (provider, c_confirm)):
        with pytest.raises(AuthError, match="key confirmation failed: wrong PIN, or the relay"):
            side.receive_confirm(frame)


def test_other_room_fails_confirmation():
    with pytest.raises(AuthError):
        handshake(consumer_room="room-4712")


def test_relay_substituting_a_pake_message_fails_confirmation():
    """A relay that swaps in a message from another session (other room) gains nothing."""
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    impostor = ChannelSetup(pin=PIN, room="other-room", role="consumer")
    consumer.start()
    p_pake = provider.start()
    p_confirm = provider.receive_pake(impostor.start())  # consumer's message replaced
    c_confirm = consumer.receive_pake(p_pake)
    with pytest.raises(AuthError):
        consumer.receive_confirm(p_confirm)
    with pytest.raises(AuthError):
        provider.receive_confirm(c_confirm)


def test_reflected_pake_message_is_refused():
    setup = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    own = setup.start()
    with pytest.raises(ProtocolError, match="reflected"):
        setup.receive_pake(own)


def test_same_role_pake_message_is_refused():
    """Two consumers (a relay joining the wrong roles) never derive a key."""
    consumer = started("consumer")
    other_consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    with pytest.raises(ProtocolError, match="invalid PAKE message"):
        consumer.receive_pake(other_consumer.start())


def test_reflected_confirmation_fails():
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    c_pake, p_pake = consumer.start(), provider.start()
    c_confirm = consumer.receive_pake(p_pake)
    provider.receive_pake(c_pake)
    with pytest.raises(AuthError):
        consumer.receive_confirm(c_confirm)


def test_altered_confirmation_fails():
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    c_pake, p_pake = consumer.start(), provider.start()
    consumer.receive_pake(p_pake)
    p_confirm = json.loads(provider.receive_pake(c_pake))
    mac = bytearray(base64.b64decode(p_confirm["confirm"]))
    mac[0] ^= 1
    altered = json.dumps({"imprint": 1, "confirm": base64.b64encode(mac).decode()})
    with pytest.raises(AuthError):
        consumer.receive_confirm(altered)


def test_version_2_first_frame_is_unsupported():
    setup = started()
    frame = json.dumps({"imprint": 2, "pake": "AAAA", "new": True})
    with pytest.raises(UnsupportedVersionError) as info:
        setup.receive_pake(frame)
    assert "version 2" in str(info.value) and "version 1" in str(info.value)
    assert (info.value.peer_version, info.value.our_version) == (2, 1)
    assert isinstance(info.value, ProtocolError)


def test_version_2_confirmation_is_unsupported():
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    consumer.start()
    consumer.receive_pake(provider.start())
    with pytest.raises(UnsupportedVersionError):
        consumer.receive_confirm(b'{"imprint": 2, "confirm": "x"}')


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"imprint"',
        b"{}",
        b'{"method": "HELLO", "pin": "x"}',
        b'{"imprint": true, "pake": "AAAA"}',
        b'{"imprint": "1", "pake": "AAAA"}',
        b'{"imprint": 1.0, "pake": "AAAA"}',
        b'{"imprint": 1}',
        b'{"imprint": 1, "pake": 5}',
        b'{"imprint": 1, "pake": "not base64!"}',
        b'{"imprint": 1, "pake": "AAAA"}',
        b'{"imprint": 1, "pake": "' + base64.b64encode(b"B" + b"\0" * 32) + b'"}',
        b'{"imprint": 1, "pake": "' + base64.b64encode(b"X" + b"\1" * 32) + b'"}',
        b'{"imprint": 1, "pake": "\xc3\xa9"}',
        b'{"imprint": 1, "confirm": "AAAA"}',
        b'{"imprint": 1, "pake": "' + b"A" * 5000 + b'"}',
    ],
)
def test_malformed_pake_frames_are_protocol_errors(frame):
    with pytest.raises(ProtocolError) as info:
        started("consumer").receive_pake(frame)
    assert not isinstance(info.value, UnsupportedVersionError)


@pytest.mark.parametrize(
    "frame",
    [
        b"garbage",
        b'{"imprint": 1}',
        b'{"imprint": 1, "confirm": null}',
        b'{"imprint": 1, "confirm": "AAAA"}',
        b'{"imprint": 1, "pake": "AAAA"}',
    ],
)
def test_malformed_confirm_frames_are_protocol_errors(frame):
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin=PIN, room=ROOM, role="provider")
    consumer.start()
    consumer.receive_pake(provider.start())
    with pytest.raises(ProtocolError):
        consumer.receive_confirm(frame)


def test_refusal_in_place_of_a_handshake_frame_names_the_peer_message():
    with pytest.raises(ProtocolError, match="refused the session: too old"):
        started("consumer").receive_pake(refusal_frame("too old"))


def test_steps_out_of_order_are_bugs():
    setup = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    with pytest.raises(RuntimeError):
        setup.receive_pake(b'{"imprint": 1, "pake": "AAAA"}')
    setup.start()
    with pytest.raises(RuntimeError):
        setup.start()
    with pytest.raises(RuntimeError):
        setup.receive_confirm(b"{}")


def test_setup_is_spent_after_a_failure():
    setup = started("consumer")
    with pytest.raises(ProtocolError):
        setup.receive_pake(b"junk")
    with pytest.raises(RuntimeError):
        setup.receive_pake(ChannelSetup(pin=PIN, room=ROOM, role="provider").start())


@pytest.mark.parametrize("pin", ["", "short", "Xk7pQ2mZ9", "Xk7pQ2m-", "Xk7pQ2mé", "Xk7p Q2m"])
def test_pin_format_is_checked_without_echoing_it(pin):
    with pytest.raises(InputError) as info:
        ChannelSetup(pin=pin, room=ROOM, role="consumer")
    if pin:
        assert pin not in str(info.value)


def test_bad_role_and_room_are_bugs():
    with pytest.raises(ValueError):
        ChannelSetup(pin=PIN, room=ROOM, role="relay")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ChannelSetup(pin=PIN, room="", role="consumer")


# First frame, refusal -------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (ChannelSetup(pin=PIN, room=ROOM, role="consumer").start(), "secure"),
        ('{"imprint": 2, "pake": "AAAA"}', "secure"),
        ('{"imprint": "garbled"}', "secure"),
        (
            '{"method":"HELLO","hostname":"h","user":"u","os":"Linux",'
            '"fingerprint":"0a1b2c3d","pin":"Xk7pQ2mZ"}',
            "plaintext-hello",
        ),
        ('{"method":"GET","path":"/sync/pull"}', "unknown"),
        ('{"status": 200}', "unknown"),
        ("[]", "unknown"),
        ("null", "unknown"),
        ("", "unknown"),
        (b"\x00\x01\xff", "unknown"),
        ("{" * 10_000, "unknown"),
        (12345, "unknown"),
    ],
)
def test_first_frame_kind(frame, kind):
    assert first_frame_kind(frame) == kind


def test_refusal_round_trip():
    message = "this provider speaks imprint sync version 1"
    frame = refusal_frame(message)
    assert json.loads(frame) == {"imprint": 1, "error": message}
    assert parse_refusal(frame) == message
    assert parse_refusal(frame.decode()) == message


@pytest.mark.parametrize(
    "frame",
    [b"", b"junk", b"[]", b'{"error": "x"}', b'{"imprint": 1, "error": 3}', b'{"imprint": 1}',
     ChannelSetup(pin=PIN, room=ROOM, role="consumer").start()],
)
def test_parse_refusal_returns_none_for_other_frames(frame):
    assert parse_refusal(frame) is None


def test_parse_refusal_neutralises_terminal_escapes_and_length():
    message = parse_refusal(refusal_frame("\x1b[2Jgone\r\n" + "x" * 1000))
    assert message is not None
    assert "\x1b" not in message and "\r" not in message and "\n" not in message
    assert message.startswith("?[2Jgone??") and len(message) <= 300


def test_parse_refusal_accepts_other_versions():
    assert parse_refusal(b'{"imprint": 2, "error": "upgrade"}') == "upgrade"


# Sealed frames ------------------------------------------------------------------


def test_bit_flip_in_ciphertext(pair):
    consumer, provider = pair
    frame = bytearray(consumer.seal(b"payload"))
    frame[-1] ^= 0x01
    with pytest.raises(TamperedFrameError, match="frame 0 failed authentication"):
        provider.open(bytes(frame))


def test_bit_flip_in_tag(pair):
    consumer, provider = pair
    frame = bytearray(consumer.seal(b"payload"))
    frame[8] ^= 0x80
    with pytest.raises(TamperedFrameError, match="failed authentication"):
        provider.open(bytes(frame))


def test_bit_flip_in_counter(pair):
    consumer, provider = pair
    frame = bytearray(consumer.seal(b"payload"))
    frame[7] ^= 0x04
    with pytest.raises(TamperedFrameError, match="frame 4 arrived where 0 was expected"):
        provider.open(bytes(frame))


def test_replay(pair):
    consumer, provider = pair
    frame = consumer.seal(b"once")
    assert provider.open(frame) == b"once"
    with pytest.raises(TamperedFrameError, match="frame 0 arrived again where 1 was expected"):
        provider.open(frame)


def test_reorder(pair):
    consumer, provider = pair
    first, second = consumer.seal(b"1"), consumer.seal(b"2")
    with pytest.raises(TamperedFrameError, match="frame 1 arrived where 0 was expected"):
        provider.open(second)
    with pytest.raises(TamperedFrameError):
        provider.open(first)


def test_drop(pair):
    consumer, provider = pair
    frames = [consumer.seal(b"%d" % i) for i in range(8)]
    for frame in frames[:5]:
        provider.open(frame)
    with pytest.raises(
        TamperedFrameError,
        match="frame 7 arrived where 5 was expected: dropped, reordered or altered by the relay",
    ):
        provider.open(frames[7])


@pytest.mark.parametrize("length", [0, 7, 8, 20, 23])
def test_truncated_frame(pair, length):
    consumer, provider = pair
    frame = consumer.seal(b"a payload long enough to cut")
    with pytest.raises(TamperedFrameError, match="truncated"):
        provider.open(frame[:length])


def test_shortened_ciphertext(pair):
    consumer, provider = pair
    frame = consumer.seal(b"a payload long enough to cut")
    with pytest.raises(TamperedFrameError, match="failed authentication"):
        provider.open(frame[:-1])


def test_wrong_direction_frame_is_named(pair):
    consumer, provider = pair
    own = provider.seal(b"provider to consumer")
    with pytest.raises(TamperedFrameError, match="other direction.*reflected"):
        provider.open(own)


def test_text_frame_where_sealed_frame_expected(pair):
    _, provider = pair
    with pytest.raises(TamperedFrameError, match="text frame"):
        provider.open('{"method": "GET"}')  # type: ignore[arg-type]


def test_channel_is_dead_after_a_failure(pair):
    consumer, provider = pair
    good = consumer.seal(b"fine")
    with pytest.raises(TamperedFrameError):
        provider.open(b"\0" * 7)
    assert provider.is_dead
    with pytest.raises(TamperedFrameError, match="closed after a rejected frame"):
        provider.open(good)
    with pytest.raises(TamperedFrameError, match="closed"):
        provider.seal(b"anything")
    # Only the side that saw the bad frame is dead; the other learns via the session.
    assert not consumer.is_dead
    consumer.seal(b"still sealing")


def test_counter_limit(pair, monkeypatch):
    consumer, provider = pair
    monkeypatch.setattr(SecureChannel, "COUNTER_LIMIT", 2)
    for i in range(3):
        assert provider.open(consumer.seal(b"%d" % i)) == b"%d" % i
    with pytest.raises(ChannelExhaustedError):
        consumer.seal(b"one too many")
    assert isinstance(ChannelExhaustedError("x"), SyncError)


def fixed_channel(send_key: bytes, receive_key: bytes) -> SecureChannel:
    return SecureChannel(
        send_key=send_key, receive_key=receive_key, transcript=b"t" * 32, verification="v"
    )


def test_counter_limit_also_bounds_what_is_accepted(monkeypatch):
    key_a, key_b = bytes(range(32)), bytes(range(32, 64))
    sender, receiver = fixed_channel(key_a, key_b), fixed_channel(key_b, key_a)
    frames = [sender.seal(b"%d" % i) for i in range(3)]
    monkeypatch.setattr(SecureChannel, "COUNTER_LIMIT", 1)
    receiver.open(frames[0])
    receiver.open(frames[1])
    with pytest.raises(TamperedFrameError, match="past the counter limit"):
        receiver.open(frames[2])


def test_seal_refuses_text(pair):
    consumer, _ = pair
    with pytest.raises(TypeError):
        consumer.seal("text")  # type: ignore[arg-type]


def test_large_frame_round_trip(pair):
    consumer, provider = pair
    payload = bytes(range(256)) * 16_384  # 4 MiB
    frame = consumer.seal(payload)
    assert len(frame) == 8 + 16 + len(payload)
    assert provider.open(frame) == payload


def test_seal_known_answer():
    """Fixed key and counter give a fixed frame: counter || XSalsa20-Poly1305(nonce=counter)."""
    key = bytes(range(32))
    channel = fixed_channel(key, key[::-1])
    frames = [channel.seal(b"imprint"), channel.seal(b"imprint")]
    # Independent construction through libsodium's raw binding.
    for counter, frame in enumerate(frames):
        nonce = counter.to_bytes(24, "big")
        assert frame == counter.to_bytes(8, "big") + nacl.bindings.crypto_secretbox_easy(
            b"imprint", nonce, key
        )
    assert frames[0].hex() == KNOWN_FRAME_0
    assert fixed_channel(key, key).seal(b"imprint") == frames[0]


# Pinned so a change of frame layout or nonce derivation cannot go unnoticed.
KNOWN_FRAME_0 = "0000000000000000cb16827c913f439d9c66fa9e9584f13823638033f1c4cb"


# Secrets never leak -----------------------------------------------------------------


def _decoded_fields(frame: bytes) -> list[bytes]:
    obj = json.loads(frame)
    return [base64.b64decode(v) for k, v in obj.items() if k in ("pake", "confirm")]


def test_pin_never_appears_in_any_frame():
    frames: list[bytes] = []
    consumer, provider = handshake(frames=frames)
    frames += [consumer.seal(b"data"), provider.seal(b"more data")]
    pin = PIN.encode()
    for frame in frames:
        assert pin not in frame and pin.lower() not in frame.lower()
        assert base64.b64encode(pin) not in frame
    for frame in frames[:4]:
        for raw in _decoded_fields(frame):
            assert pin not in raw


def test_pin_and_keys_stay_out_of_reprs_and_errors():
    consumer = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    provider = ChannelSetup(pin="Ab3dEf6h", room=ROOM, role="provider")
    c_pake, p_pake = consumer.start(), provider.start()
    p_confirm = provider.receive_pake(c_pake)
    consumer.receive_pake(p_pake)
    with pytest.raises(AuthError) as info:
        consumer.receive_confirm(p_confirm)
    for text in (str(info.value), repr(info.value), repr(consumer), repr(provider)):
        assert PIN not in text and "Ab3dEf6h" not in text
    channel, _ = handshake()
    assert "key" not in repr(channel).lower()


def test_reconcile_frames_travel_packed_inside_the_seal(pair):
    from imprint.errors import ProtocolError
    from imprint.messages.wire import (
        Done,
        Range,
        RangeMode,
        Reconcile,
        ReconcileMessage,
        encode_frame,
    )
    from imprint.protocol.codec import BINARY_FRAME, SecureCodec

    consumer, provider = pair
    send, receive = SecureCodec(consumer), SecureCodec(provider)
    frame = Reconcile(message=ReconcileMessage(ranges=(Range(RangeMode.FP, b"\x01\x02", fingerprint=b"\xff" * 16),
                                                      Range(RangeMode.FILL, None, items=(b"m" + b"\x00" * 16,)))))
    sealed = send.encode(frame)
    assert receive.decode(sealed) == frame
    assert len(sealed) < len(encode_frame(frame))  # raw bytes, not base64 in JSON
    assert receive.decode(send.encode(Done())) == Done()  # every other frame is JSON as before
    # A forged binary payload is a protocol error, never a crash.
    with pytest.raises(ProtocolError, match="reconcile frame"):
        receive.decode(send.channel.seal(BINARY_FRAME + b"\xc1garbage"))


def test_a_memory_batch_with_vectors_travels_sealed_in_its_binary_form(pair):
    import struct

    from imprint.messages.records import MemoryRecord
    from imprint.messages.wire import MemoryBatch, encode_frame
    from imprint.protocol.codec import VECTOR_FRAME, SecureCodec

    consumer, provider = pair
    vectors = (struct.pack("<3f", 0.1, 0.2, 0.3), None)
    batch = MemoryBatch(dataset="memories", seq=1, records=(MemoryRecord(content="a"), MemoryRecord(content="b")),
                        vectors=vectors, model="0123456789abcdef")
    sealed = SecureCodec(provider).encode(batch)
    assert consumer.open(sealed)[:1] == VECTOR_FRAME
    consumer, provider = handshake()  # a fresh pair: the first frame was opened above
    assert SecureCodec(consumer).decode(SecureCodec(provider).encode(batch)) == batch
    # without vectors the batch is the same JSON as ever
    plain = MemoryBatch.of(1, batch.records)
    assert consumer.open(SecureCodec(provider).encode(plain)) == encode_frame(plain)
