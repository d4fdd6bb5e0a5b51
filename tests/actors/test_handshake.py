"""Handshake on both sides, wired through an in-memory relay that records every frame.

Two Handshake actors (provider and consumer) each talk to a `LoopbackRelay`
standing in for their RelayConnection: what one side sends (`SendRaw`, or
`SendFrame` encoded with the codec it installed) reaches the other side as
`RawFrameReceived`, and the `Wire` keeps every frame in order. The provider
decides through a real TrustGate with a scripted approver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest
from nacl.signing import SigningKey

from imprint.actors.handshake import Handshake
from imprint.actors.trust_gate import TrustGate
from imprint.errors import AuthError, RejectedError
from imprint.identity import DeviceIdentity, HostInfo
from imprint.messages.session import (
    ApprovalRequired,
    AutoAccepted,
    HandshakeFailed,
    HandshakeSucceeded,
    HelloSent,
    PeerArrived,
    PeerInfo,
    RawFrameReceived,
    SendFrame,
    SendRaw,
    StartHandshake,
    UseCodec,
)
from imprint.messages.store import Ping
from imprint.messages.wire import PROTOCOL_VERSION, DatasetCounts, Meta
from imprint.protocol.channel import ChannelSetup
from imprint.protocol.handshake import PLAINTEXT_REFUSAL
from imprint.protocol.handshake import Handshake as HandshakeMachine
from imprint.trust import TrustList

from .fakes import Recorder, ScriptedApprover, stopping_new_actors

pytestmark = pytest.mark.timeout(60)

PIN = "Qx7Lm2Rt"
ROOM = "room-Zq81"
PROVIDER_HOST = HostInfo(hostname="provider-box", user="paula", os="Linux 6.8")
CONSUMER_HOST = HostInfo(hostname="carol-laptop-77", user="carol_secret_user", os="Darwin 23.4")


def identity(seed: int) -> DeviceIdentity:
    return DeviceIdentity(SigningKey(bytes([seed]) * 32))


# ---------------------------------------------------------------- the in-memory relay


class Wire:
    """Both directions of the fake relay: every frame in order, and who gets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[tuple[str, bytes | str]] = []
        self.peers: dict[str, Any] = {}
        self.codecs: dict[str, Any] = {}

    def carry(self, sender: str, data: bytes | str) -> None:
        with self._lock:
            self._frames.append((sender, data))
        receiver = "consumer" if sender == "provider" else "provider"
        self.peers[receiver].tell(RawFrameReceived(data=data))

    @property
    def frames(self) -> list[tuple[str, bytes | str]]:
        with self._lock:
            return list(self._frames)

    def sent_by(self, role: str) -> list[bytes | str]:
        return [data for sender, data in self.frames if sender == role]


class LoopbackRelay(pykka.ThreadingActor):
    """Stands in for one side's RelayConnection."""

    def __init__(self, *, role: str, wire: Wire) -> None:
        super().__init__()
        self.role = role
        self.wire = wire
        self.codec: Any = None

    def on_receive(self, message: Any) -> Any:
        match message:
            case SendRaw(data=data):
                self.wire.carry(self.role, data)
            case SendFrame(frame=frame):
                self.wire.carry(self.role, self.codec.encode(frame))
            case UseCodec(codec=codec):
                self.codec = codec
                self.wire.codecs[self.role] = codec
            case Ping():
                return True
            case _:
                raise TypeError(f"the relay does not handle {message!r}")
        return None


# ---------------------------------------------------------------- rig


@dataclass
class Side:
    handshake: Any
    listener: Recorder

    def outcome(self) -> HandshakeSucceeded | HandshakeFailed:
        return self.listener.wait_for(HandshakeSucceeded, HandshakeFailed)


class Pair:
    """A provider and a consumer Handshake joined by a Wire."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        provider_mode: str = "encrypted",
        consumer_mode: str = "encrypted",
        provider_pin: str = PIN,
        consumer_pin: str = PIN,
        answer: Any = "accept",
        consumer_identity: DeviceIdentity | None = None,
        consumer: bool = True,
    ) -> None:
        self.wire = Wire()
        self.trust_list = TrustList(tmp_path / "trusted_devices.json")
        self.approver = ScriptedApprover(answer)
        self.consumer_identity = consumer_identity or identity(2)
        self.provider_identity = identity(1)
        self.relays = [LoopbackRelay.start(role=role, wire=self.wire) for role in ("provider", "consumer")]
        provider_listener = Recorder("provider session")
        gate = TrustGate.start(trust_list=self.trust_list, approver=self.approver, listener=provider_listener)
        self.provider = Side(
            Handshake.start(
                handshake=HandshakeMachine(role="provider", mode=provider_mode, pin=provider_pin, room=ROOM,
                                           identity=self.provider_identity, host=PROVIDER_HOST),
                relay=self.relays[0],
                listener=provider_listener,
                trust_gate=gate,
            ),
            provider_listener,
        )
        self.wire.peers["provider"] = self.provider.handshake
        if consumer:
            consumer_listener = Recorder("consumer session")
            self.consumer = Side(
                Handshake.start(
                    handshake=HandshakeMachine(role="consumer", mode=consumer_mode, pin=consumer_pin, room=ROOM,
                                               identity=self.consumer_identity, host=CONSUMER_HOST),
                    relay=self.relays[1],
                    listener=consumer_listener,
                ),
                consumer_listener,
            )
            self.wire.peers["consumer"] = self.consumer.handshake
        else:
            self.wire.peers["consumer"] = Recorder("consumer end of the wire")

    def start(self) -> None:
        # Provider first, as the session does: it waits for the first frame.
        self.provider.handshake.tell(StartHandshake())
        if "consumer" in self.__dict__:
            self.consumer.handshake.tell(StartHandshake())

    def consumer_peer(self, verification: str = "") -> PeerInfo:
        """Who the provider sees (with this session's code, which it shows before approving)."""
        return PeerInfo(verification=verification,
            hostname=CONSUMER_HOST.hostname,
            user=CONSUMER_HOST.user,
            os=CONSUMER_HOST.os,
            fingerprint=self.consumer_identity.fingerprint,
            public_key=self.consumer_identity.public_key.hex(),
            protocol=PROTOCOL_VERSION,
            items=1024,  # an empty store, said rounded up
        )

    def provider_peer(self, verification: str = "") -> PeerInfo:
        return PeerInfo(verification=verification,
            hostname=PROVIDER_HOST.hostname,
            user=PROVIDER_HOST.user,
            os=PROVIDER_HOST.os,
            fingerprint=self.provider_identity.fingerprint,
            public_key=self.provider_identity.public_key.hex(),
            protocol=PROTOCOL_VERSION,
            items=1024,
        )

    def settle(self) -> None:
        """Wait until the Handshakes and relays handled everything sent so far."""
        actors = [self.provider.handshake, *self.relays]
        if "consumer" in self.__dict__:
            actors.append(self.consumer.handshake)
        for _ in range(3):  # a frame may bounce between the sides
            for ref in actors:
                assert ref.ask(Ping(), timeout=10) is True


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


@pytest.fixture
def pair(tmp_path: Path) -> Callable[..., Pair]:
    return lambda **kw: Pair(tmp_path, **kw)


def kind(failed: HandshakeFailed) -> str:
    """The kind of failure, by its error's type."""
    return {AuthError: "auth", RejectedError: "rejected"}.get(type(failed.error), "protocol")


def message(failed: HandshakeFailed) -> str:
    return str(failed.error)


def as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def assert_no_secrets(wire: Wire, *secrets: str) -> None:
    for sender, data in wire.frames:
        raw = as_bytes(data)
        for secret in secrets:
            assert secret.encode("utf-8") not in raw, f"{secret!r} crossed the relay in a frame from the {sender}"


# ---------------------------------------------------------------- encrypted mode


def test_encrypted_handshake_succeeds_on_both_sides_and_the_relay_learns_nothing(pair: Callable[..., Pair]) -> None:
    p = pair(answer="accept")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert isinstance(provider, HandshakeSucceeded) and isinstance(consumer, HandshakeSucceeded)
    assert provider.verification == consumer.verification
    assert len(provider.verification) == 14 and provider.verification.count("-") == 2
    code = provider.verification
    assert provider == HandshakeSucceeded(peer=p.consumer_peer(code), verification=code)
    # The provider's answer says who it is, signed over this session: the consumer can show it.
    assert consumer == HandshakeSucceeded(peer=p.provider_peer(code), verification=code)
    # The provider's user is asked with the code in hand (the peer's own claim plays no part in it).
    assert p.provider.listener.messages == [PeerArrived(), ApprovalRequired(peer=p.consumer_peer(code), warning=""), provider]
    # The consumer says when its HELLO is out (with the code to compare), then the outcome.
    assert p.consumer.listener.messages == [PeerArrived(), HelloSent(verification=consumer.verification), consumer]
    assert p.approver.calls == [(p.consumer_peer(code), "")]

    # Each side: PAKE and confirm (text), then one sealed frame (binary), nothing else.
    # The two confirms may cross; the sealed HELLO and its answer come last.
    for role in ("consumer", "provider"):
        pake, confirm, sealed = p.wire.sent_by(role)
        assert list(json.loads(pake)) == ["imprint", "pake"]
        assert list(json.loads(confirm)) == ["imprint", "confirm"]
        assert isinstance(sealed, bytes)
    assert [s for s, d in p.wire.frames if isinstance(d, bytes)] == ["consumer", "provider"]
    assert all(isinstance(d, bytes) for _, d in p.wire.frames[-2:])
    assert_no_secrets(p.wire, PIN, CONSUMER_HOST.hostname, CONSUMER_HOST.user, CONSUMER_HOST.os)

    # Both sides installed codecs that understand each other.
    p.settle()
    assert {r: c.name for r, c in p.wire.codecs.items()} == {"provider": "encrypted", "consumer": "encrypted"}
    meta = Meta(datasets=DatasetCounts(memories=3, facts=4))
    assert p.wire.codecs["consumer"].decode(p.wire.codecs["provider"].encode(meta)) == meta
    assert p.wire.codecs["provider"].decode(p.wire.codecs["consumer"].encode(meta)) == meta


def test_trust_is_remembered_and_the_next_session_is_auto_accepted(pair: Callable[..., Pair]) -> None:
    first = pair(answer="trust")
    first.start()
    assert isinstance(first.provider.outcome(), HandshakeSucceeded)
    assert isinstance(first.consumer.outcome(), HandshakeSucceeded)
    assert first.trust_list.status(first.consumer_identity.fingerprint, first.consumer_identity.public_key.hex()) == "trusted"

    second = pair(answer="reject")  # the approver must not be asked
    second.start()

    provider, consumer = second.provider.outcome(), second.consumer.outcome()
    assert isinstance(provider, HandshakeSucceeded) and isinstance(consumer, HandshakeSucceeded)
    assert second.provider.listener.messages == [PeerArrived(), AutoAccepted(peer=second.consumer_peer(provider.verification)),
                                                 provider]
    assert second.approver.calls == []


def test_a_wrong_pin_fails_both_sides_and_burns_the_session(pair: Callable[..., Pair]) -> None:
    p = pair(consumer_pin="Qx7Lm2Rz")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert isinstance(provider, HandshakeFailed) and kind(provider) == "auth"
    assert "wrong PIN" in message(provider) and "burned" in message(provider)
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "auth"
    assert "PIN" in message(consumer)
    assert p.approver.calls == []
    assert not p.provider.listener.of_type(ApprovalRequired)
    # No key was confirmed: nothing sealed crossed, and neither PIN did.
    assert all(isinstance(d, str) for _, d in p.wire.frames)
    assert json.loads(p.wire.sent_by("provider")[-1]) == {
        "imprint": 1, "error": "wrong PIN; this session's PIN is burned, ask for a new one",
    }
    assert_no_secrets(p.wire, PIN, "Qx7Lm2Rz", CONSUMER_HOST.hostname)

    # One guess per PIN: a second attempt with the right PIN gets no answer.
    sent = len(p.wire.frames)
    retry = ChannelSetup(pin=PIN, room=ROOM, role="consumer")
    p.provider.handshake.tell(RawFrameReceived(data=retry.start().decode()))
    p.settle()
    assert len(p.wire.frames) == sent
    assert p.provider.listener.of_type(HandshakeFailed, HandshakeSucceeded) == [provider]


def test_a_rejection_reaches_the_consumer_as_rejected(pair: Callable[..., Pair]) -> None:
    p = pair(answer="reject")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert kind(provider) == "rejected"
    assert message(provider) == f"rejected {CONSUMER_HOST.hostname} ({p.consumer_identity.fingerprint})"
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "rejected"
    assert "rejected by user" in message(consumer)
    assert p.trust_list.load() == []


def test_an_approver_that_fails_rejects(pair: Callable[..., Pair]) -> None:
    p = pair(answer=OSError("stdin closed"))
    p.start()

    assert kind(p.provider.outcome()) == "rejected"
    assert kind(p.consumer.outcome()) == "rejected"


# ---------------------------------------------------------------- forged identities


@dataclass(frozen=True)
class ClaimsFingerprint(DeviceIdentity):
    """Signs with its own key but claims another device's fingerprint."""

    claimed: str = ""

    @property
    def fingerprint(self) -> str:
        return self.claimed


@dataclass(frozen=True)
class ShowsKey(DeviceIdentity):
    """Shows another device's public key (and so its fingerprint) but signs with its own."""

    shown: bytes = b""

    @property
    def public_key(self) -> bytes:
        return self.shown


@pytest.mark.parametrize("forgery", ["fingerprint-of-another-key", "key-of-another-device"])
def test_a_hello_signed_by_another_key_than_its_fingerprint_is_refused(
    pair: Callable[..., Pair], forgery: str
) -> None:
    victim = identity(9)
    if forgery == "fingerprint-of-another-key":
        impostor: DeviceIdentity = ClaimsFingerprint(SigningKey(bytes([7]) * 32), claimed=victim.fingerprint)
        expected = "fingerprint does not match its public key"
    else:
        impostor = ShowsKey(SigningKey(bytes([7]) * 32), shown=victim.public_key)
        expected = "signature is invalid"
    assert impostor.fingerprint == victim.fingerprint
    p = pair(consumer_identity=impostor, answer="accept")
    # The victim is trusted: the forgery must not ride on that.
    p.trust_list.add(fingerprint=victim.fingerprint, hostname="victim", public_key=victim.public_key.hex())
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert isinstance(provider, HandshakeFailed) and kind(provider) == "protocol"
    assert expected in message(provider)
    assert p.approver.calls == []
    assert not p.provider.listener.of_type(ApprovalRequired, AutoAccepted, HandshakeSucceeded)
    # The consumer hears why, rather than a dropped connection.
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "protocol"
    assert expected in message(consumer)


# ---------------------------------------------------------------- plaintext mode


def test_plaintext_handshake_speaks_specs_frames_exactly(pair: Callable[..., Pair]) -> None:
    p = pair(provider_mode="plaintext", consumer_mode="plaintext", answer="y")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert provider == HandshakeSucceeded(
        peer=PeerInfo(
            hostname=CONSUMER_HOST.hostname, user=CONSUMER_HOST.user, os=CONSUMER_HOST.os,
            fingerprint=p.consumer_identity.fingerprint,
        ),
        verification="",
    )
    assert consumer == HandshakeSucceeded(peer=None, verification="")
    [(_, hello), (_, answer)] = p.wire.frames
    assert [s for s, _ in p.wire.frames] == ["consumer", "provider"]
    assert isinstance(hello, str) and isinstance(answer, str)
    assert list(json.loads(hello).items()) == [
        ("method", "HELLO"),
        ("hostname", CONSUMER_HOST.hostname),
        ("user", CONSUMER_HOST.user),
        ("os", CONSUMER_HOST.os),
        ("fingerprint", p.consumer_identity.fingerprint),
        ("pin", PIN),
    ]
    assert json.loads(answer) == {"status": 200, "body": "ok"}
    p.settle()
    assert {r: c.name for r, c in p.wire.codecs.items()} == {"provider": "plaintext", "consumer": "plaintext"}


def test_plaintext_wrong_pin_is_a_403_and_auth_on_both_sides(pair: Callable[..., Pair]) -> None:
    p = pair(provider_mode="plaintext", consumer_mode="plaintext", consumer_pin="Qx7Lm2Rz")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert kind(provider) == "auth" and "burned" in message(provider)
    assert kind(consumer) == "auth" and "invalid PIN" in message(consumer)
    assert json.loads(p.wire.sent_by("provider")[-1]) == {"status": 403, "body": "invalid PIN"}
    assert p.approver.calls == []


def test_an_encrypted_provider_refuses_a_plaintext_consumer_naming_the_flag(pair: Callable[..., Pair]) -> None:
    p = pair(provider_mode="encrypted", consumer_mode="plaintext")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    assert isinstance(provider, HandshakeFailed) and kind(provider) == "protocol" and "--plaintext" in message(provider)
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "protocol" and "--plaintext" in message(consumer)
    assert [json.loads(d) for d in p.wire.sent_by("provider")] == [{"status": 400, "body": PLAINTEXT_REFUSAL}]
    assert p.approver.calls == []


def test_a_plaintext_provider_answers_our_handshake_with_specs_400(pair: Callable[..., Pair]) -> None:
    p = pair(provider_mode="plaintext", consumer_mode="encrypted")
    p.start()

    provider, consumer = p.provider.outcome(), p.consumer.outcome()

    [answer] = p.wire.sent_by("provider")
    assert isinstance(answer, str)
    body = json.loads(answer)
    assert list(body) == ["status", "body"] and body["status"] == 400 and "--plaintext" in body["body"]
    assert isinstance(provider, HandshakeFailed) and kind(provider) == "protocol" and "--plaintext" in message(provider)
    # That 400 is not authenticated (a relay can forge it): the consumer says what it saw
    # and never advises turning encryption off on its say-so.
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "protocol"
    assert "--plaintext" not in message(consumer) and "without the encrypted handshake" in message(consumer)
    assert_no_secrets(p.wire, PIN)


# ---------------------------------------------------------------- protocol version


def test_an_unknown_protocol_version_is_refused_clearly(pair: Callable[..., Pair]) -> None:
    p = pair(consumer=False)
    p.start()
    pake = json.loads(ChannelSetup(pin=PIN, room=ROOM, role="consumer").start())

    p.provider.handshake.tell(RawFrameReceived(data=json.dumps({"imprint": 2, "pake": pake["pake"]})))

    provider = p.provider.outcome()
    assert isinstance(provider, HandshakeFailed) and kind(provider) == "protocol"
    assert "version 2" in message(provider)
    [refusal] = p.wire.sent_by("provider")
    answer = json.loads(refusal)
    assert answer["imprint"] == 1 and "version 2" in answer["error"]

    # And a consumer that gets such a refusal says so.
    c = pair(consumer=True)
    c.wire.peers["provider"] = Recorder("provider end of the wire")
    c.consumer.handshake.tell(StartHandshake())
    c.consumer.handshake.tell(RawFrameReceived(data=refusal))
    consumer = c.consumer.outcome()
    assert isinstance(consumer, HandshakeFailed) and kind(consumer) == "protocol"
    assert "refused" in message(consumer) and "version 2" in message(consumer)
