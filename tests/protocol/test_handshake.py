"""The handshake machine alone: exact command sequences, no actors, no sockets."""

from __future__ import annotations

import json

import msgspec
import pytest
from nacl.signing import SigningKey

from imprint.errors import AuthError, ProtocolError, RejectedError
from imprint.identity import DeviceIdentity, HostInfo
from imprint.messages.session import PeerInfo
from imprint.messages.wire import (
    PROTOCOL_VERSION,
    ProviderIdentity,
    Response,
    decode_frame,
    encode_frame,
)
from imprint.protocol.codec import PlainCodec, SecureCodec
from imprint.protocol.handshake import (
    AskApproval,
    Failed,
    Handshake,
    HelloSent,
    InstallCodec,
    SendFrame,
    SendRaw,
    Succeeded,
    provider_signature_message,
)

PIN, ROOM = "Xk7pQ2mZ", "room-4711"
PROVIDER = DeviceIdentity(SigningKey(b"\x01" * 32))
CONSUMER = DeviceIdentity(SigningKey(b"\x02" * 32))
PROVIDER_HOST = HostInfo(hostname="provider-box", user="paula", os="Linux 6.8")
CONSUMER_HOST = HostInfo(hostname="carol-laptop", user="carol", os="Darwin 23.4")


def machines(mode: str = "encrypted", *, consumer_pin: str = PIN) -> tuple[Handshake, Handshake]:
    provider = Handshake(role="provider", mode=mode, pin=PIN, room=ROOM, identity=PROVIDER, host=PROVIDER_HOST)
    consumer = Handshake(role="consumer", mode=mode, pin=consumer_pin, room=ROOM, identity=CONSUMER, host=CONSUMER_HOST)
    return provider, consumer


def sent(commands: list) -> list[bytes | str]:
    return [c.data for c in commands if isinstance(c, SendRaw)]


def peer(identity: DeviceIdentity, host: HostInfo, *, with_key: bool = True, code: str = "") -> PeerInfo:
    # The encrypted mode says which sync protocol each side speaks, and how many items it holds (rounded up:
    # an empty store says 1024); the plaintext HELLO is SPEC's and says nothing. `code`: the session's
    # verification code, which each side shows with the peer (the provider before its user decides).
    return PeerInfo(hostname=host.hostname, user=host.user, os=host.os, fingerprint=identity.fingerprint,
                    public_key=identity.public_key.hex() if with_key else "", protocol=PROTOCOL_VERSION if with_key else 0,
                    items=1024 if with_key else 0, verification=code)


def test_the_encrypted_handshake_step_by_step() -> None:
    provider, consumer = machines()
    assert provider.start() == []
    [pake_c] = sent(consumer.start())
    assert list(json.loads(pake_c)) == ["imprint", "pake"]

    out = provider.receive(pake_c)
    assert [type(c) for c in out] == [SendRaw, SendRaw]
    pake_p, confirm_p = sent(out)
    [confirm_c] = sent(consumer.receive(pake_p))

    out = consumer.receive(confirm_p)
    assert [type(c) for c in out] == [SendRaw, HelloSent]
    sealed_hello, code = out[0].data, out[1].verification
    assert isinstance(sealed_hello, bytes) and len(code) == 14

    assert provider.receive(confirm_c) == []
    assert provider.receive(sealed_hello) == [AskApproval(peer=peer(CONSUMER, CONSUMER_HOST, code=code))]

    out = provider.decide("accept")
    assert [type(c) for c in out] == [InstallCodec, Succeeded, SendFrame]
    assert isinstance(out[0].codec, SecureCodec)
    assert out[1] == Succeeded(peer=peer(CONSUMER, CONSUMER_HOST, code=code), verification=code)
    answer = out[0].codec.encode(out[2].frame)  # what goes on the wire: sealed

    out = consumer.receive(answer)
    assert [type(c) for c in out] == [InstallCodec, Succeeded]
    # The provider said who it is, signed over this session: the consumer can show it.
    assert out[1] == Succeeded(peer=peer(PROVIDER, PROVIDER_HOST, code=code), verification=code)
    assert provider.finished and consumer.finished
    assert provider.receive(b"anything") == [] and consumer.receive(b"anything") == []


def test_a_wrong_pin_burns_the_session_with_a_last_word() -> None:
    provider, consumer = machines(consumer_pin="Zz9zZz9z")
    provider.start()
    pake_p, confirm_p = sent(provider.receive(sent(consumer.start())[0]))
    [confirm_c] = sent(consumer.receive(pake_p))
    consumer_out = consumer.receive(confirm_p)
    out = provider.receive(confirm_c)
    assert [type(c) for c in out] == [SendRaw, Failed]
    assert out[0].last_word is True and "wrong PIN" in json.loads(out[0].data)["error"]
    assert isinstance(out[1].error, AuthError) and "burned" in str(out[1].error)
    assert [type(c) for c in consumer_out] == [Failed] and isinstance(consumer_out[0].error, AuthError)


def _asked() -> tuple[Handshake, Handshake]:
    """Both sides up to the provider's approval question."""
    provider, consumer = machines()
    provider.start()
    pake_p, confirm_p = sent(provider.receive(sent(consumer.start())[0]))
    [confirm_c] = sent(consumer.receive(pake_p))
    sealed_hello = sent(consumer.receive(confirm_p))[0]
    provider.receive(confirm_c)
    provider.receive(sealed_hello)
    return provider, consumer


def test_a_rejection_is_sealed_and_ends_both_sides_as_rejected() -> None:
    provider, consumer = _asked()
    out = provider.decide("reject")
    assert [type(c) for c in out] == [InstallCodec, SendFrame, Failed]
    assert out[1].frame == Response(status=403, body="rejected by user") and out[1].last_word
    assert isinstance(out[2].error, RejectedError)
    answer = out[0].codec.encode(out[1].frame)
    [failed] = consumer.receive(answer)
    assert isinstance(failed.error, RejectedError) and "rejected by user" in str(failed.error)


@pytest.mark.parametrize("forgery", ["signature", "fingerprint", "missing"])
def test_a_provider_identity_that_does_not_hold_up_is_refused(forgery: str) -> None:
    provider, consumer = _asked()
    install, succeeded, send = provider.decide("accept")
    body = msgspec.convert(send.frame.body, ProviderIdentity)
    if forgery == "signature":  # signed by another key than the one shown
        other = DeviceIdentity(SigningKey(b"\x03" * 32))
        body = msgspec.structs.replace(body, signature=other.sign(
            provider_signature_message(b"x" * 32, other.public_key)).hex())
    elif forgery == "fingerprint":  # another device's fingerprint with this key
        body = msgspec.structs.replace(body, fingerprint=CONSUMER.fingerprint)
    forged = msgspec.to_builtins(body) if forgery != "missing" else "ok"
    out = consumer.receive(install.codec.encode(Response(status=200, body=forged)))
    assert [type(c) for c in out] == [Failed] and isinstance(out[0].error, ProtocolError)


def test_the_plaintext_handshake_speaks_imprints_frames_exactly() -> None:
    provider, consumer = machines("plaintext")
    provider.start()
    out = consumer.start()
    assert [type(c) for c in out] == [SendRaw, HelloSent] and out[1] == HelloSent()
    hello = json.loads(out[0].data)
    assert set(hello) == {"method", "hostname", "user", "os", "fingerprint", "pin"} and hello["pin"] == PIN
    assert provider.receive(out[0].data) == [AskApproval(peer=peer(CONSUMER, CONSUMER_HOST, with_key=False))]
    out = provider.decide("trust")
    assert isinstance(out[0].codec, PlainCodec)
    assert out[2] == SendFrame(frame=Response(status=200, body="ok"))
    out = consumer.receive(encode_frame(Response(status=200, body="ok")).decode())
    assert [type(c) for c in out] == [InstallCodec, Succeeded] and out[1] == Succeeded(peer=None)


def test_a_plaintext_wrong_pin_is_a_403_and_auth() -> None:
    provider, consumer = machines("plaintext", consumer_pin="Zz9zZz9z")
    provider.start()
    out = provider.receive(sent(consumer.start())[0])
    assert [type(c) for c in out] == [SendRaw, Failed]
    assert decode_frame(out[0].data) == Response(status=403, body="invalid PIN")
    [failed] = consumer.receive(out[0].data)
    assert isinstance(failed.error, AuthError)


def test_an_unauthenticated_plaintext_answer_never_advises_plaintext() -> None:
    _, consumer = machines()
    consumer.start()
    [failed] = consumer.receive(json.dumps({"status": 400, "body": "use --plaintext"}))
    assert isinstance(failed.error, ProtocolError) and "--plaintext" not in str(failed.error)
