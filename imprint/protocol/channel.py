"""The secure channel: PAKE, key confirmation and sealed frames, without I/O.

The relay forwards every frame between provider and consumer and must learn
neither the PIN nor the data (SPEC "Modes"). Like magic-wormhole, both sides
turn the short PIN into a strong shared key with SPAKE2, prove to each other
that they hold the same key, and only then send anything of substance, each
frame sealed with a per-direction key and numbered so the relay cannot
replay, reorder, drop or reflect frames unnoticed.

This module never touches a socket and starts no thread (STYLE "Sans-I/O where
it pays"): the caller feeds it the frames it received and sends the bytes it
returns. Two objects do the work:

* :class:`ChannelSetup` runs one side's handshake::

      new --start()--> started --receive_pake()--> confirming
          --receive_confirm()--> done (returns a SecureChannel)

  Every step on the way sends exactly one text frame. Any failure makes the
  setup spent; a new session needs a new PIN and a new setup.

* :class:`SecureChannel` seals and opens binary frames once keys are
  confirmed. It dies on the first bad frame.

Frames, in order (both sides send theirs without waiting for the other's)::

    text   {"imprint":1,"pake":"<base64 SPAKE2 message, 33 bytes>"}
    text   {"imprint":1,"confirm":"<base64 HMAC-SHA256, 32 bytes>"}
    binary counter (8 bytes, big-endian) || XSalsa20-Poly1305 box (16-byte tag + ciphertext)
    ...

Before a key exists a side may refuse in clear with
``{"imprint":1,"error":"<message>"}`` (:func:`refusal_frame`). Such a frame is
not authenticated: the relay can forge one, so it can end a session (which it
can anyway by closing the socket) but never make one succeed.

Key schedule (all HKDF-SHA256, salt = transcript, IKM = SPAKE2 key)::

    transcript  = SHA-256 over length-prefixed: label, version, room,
                  consumer's PAKE message, provider's PAKE message
    k_p2c       = HKDF(info="imprint p2c")          provider -> consumer box key
    k_c2p       = HKDF(info="imprint c2p")          consumer -> provider box key
    k_confirm_p = HKDF(info="imprint confirm provider")
    k_confirm_c = HKDF(info="imprint confirm consumer")
    verify      = HKDF(info="imprint verify", 6 bytes) -> "4f2a-91c0-7d3b"
    confirm frame of side X = HMAC-SHA256(k_confirm_X, transcript)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, ClassVar, Literal, TypeVar

import msgspec
import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from imprint.errors import (
    AuthError,
    ChannelExhaustedError,
    InputError,
    ProtocolError,
    TamperedFrameError,
    UnsupportedVersionError,
)
from imprint.messages.wire import Role
from imprint.protocol.addresses import PIN_ALPHABET, PIN_LENGTH

#: Version of the secure sync protocol; every handshake frame names it.
PROTOCOL_VERSION: int = 1


#: Largest handshake frame we parse. Ours are under 100 bytes; anything much
#: bigger is not a handshake and should not cost a big JSON parse.
MAX_HANDSHAKE_FRAME_BYTES = 4096
#: Longest peer refusal message we pass on to a human.
MAX_REFUSAL_CHARS = 300

_PIN_ALPHABET = frozenset(PIN_ALPHABET)

_COUNTER_BYTES = 8
_KEY_BYTES = 32
_VERIFY_BYTES = 6
#: Side byte + one Ed25519 group element, as spake2 0.9 sends it.
_PAKE_MESSAGE_BYTES = 33
_CONFIRM_BYTES = 32
_TAG_BYTES = nacl.secret.SecretBox.MACBYTES
_NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE


# Handshake frames -----------------------------------------------------------

_S = TypeVar("_S", bound=msgspec.Struct)


class _PakeFrame(msgspec.Struct, frozen=True):
    imprint: int
    pake: str


class _ConfirmFrame(msgspec.Struct, frozen=True):
    imprint: int
    confirm: str


class _RefusalFrame(msgspec.Struct, frozen=True):
    imprint: int
    error: str


def _as_bytes(frame: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(frame, str):
        return frame.encode("utf-8")
    if isinstance(frame, bytes | bytearray | memoryview):
        return bytes(frame)
    raise ProtocolError(f"expected a text or binary frame, got {type(frame).__name__}")


def _decode_object(frame: bytes | str) -> dict[str, Any]:
    """JSON-decode a handshake frame into a dict; ProtocolError if it is not one."""
    data = _as_bytes(frame)
    if len(data) > MAX_HANDSHAKE_FRAME_BYTES:
        raise ProtocolError(
            f"handshake frame of {len(data)} bytes, more than {MAX_HANDSHAKE_FRAME_BYTES}"
        )
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"handshake frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"handshake frame is JSON {type(obj).__name__}, not an object")
    return obj


def _sanitize(message: str) -> str:
    """Make a peer-chosen string safe to print: no control or escape characters."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in message)
    if len(clean) > MAX_REFUSAL_CHARS:
        clean = clean[: MAX_REFUSAL_CHARS - 3] + "..."
    return clean


def _refusal_message(obj: dict[str, Any]) -> str | None:
    version, error = obj.get("imprint"), obj.get("error")
    # Any integer version: a refusal is how a newer peer tells an older one
    # why it stops, so its shape must be readable across versions.
    if type(version) is int and isinstance(error, str):
        return _sanitize(error)
    return None


def _decode_handshake(frame: bytes | str, shape: type[_S], what: str) -> _S:
    """Decode one of our handshake frames, checking refusal, version, then shape."""
    obj = _decode_object(frame)
    if "imprint" not in obj:
        raise ProtocolError(f"expected the peer's {what} frame, got a frame without 'imprint'")
    refusal = _refusal_message(obj)
    if refusal is not None:
        # Unauthenticated (see module docstring): report it, trust nothing else.
        raise ProtocolError(f"the peer refused the session: {refusal}")
    version = obj["imprint"]
    if type(version) is not int:  # bool is an int subclass; true must not mean 1
        raise ProtocolError(f"'imprint' must be an integer version, got {type(version).__name__}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(version)
    try:
        return msgspec.convert(obj, shape)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed {what} frame: {exc}") from None


def _b64decode(text: str, *, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ProtocolError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise ProtocolError(f"{what} is {len(raw)} bytes, expected {length}")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def first_frame_kind(frame: bytes | str) -> Literal["secure", "plaintext-hello", "unknown"]:
    """Classify the first frame a provider receives, to pick the mode.

    Args:
        frame: The frame as received (text or binary).

    Returns:
        ``"secure"`` for one of our handshake frames (any object with an
        ``"imprint"`` key, whatever its version: :meth:`ChannelSetup.receive_pake`
        then names the problem precisely), ``"plaintext-hello"`` for the
        original's ``{"method":"HELLO",...}``, ``"unknown"`` for anything else.
        Never raises.
    """
    try:
        obj = _decode_object(frame)
    except Exception:  # noqa: BLE001 - classification must never fail
        return "unknown"
    if "imprint" in obj:
        return "secure"
    if obj.get("method") == "HELLO":
        return "plaintext-hello"
    return "unknown"


def refusal_frame(message: str) -> bytes:
    """A clear-text refusal, sent when a side stops before any key exists.

    Never put secrets in ``message``: the relay reads it.

    Returns:
        UTF-8 JSON ``{"imprint": 1, "error": message}`` for a text frame.
    """
    return msgspec.json.encode(_RefusalFrame(imprint=PROTOCOL_VERSION, error=message))


def parse_refusal(frame: bytes | str) -> str | None:
    """The message of a refusal frame, or None if ``frame`` is not one.

    The message comes from the peer or from the relay (refusals are not
    authenticated); control characters are replaced with ``?`` and it is
    shortened to :data:`MAX_REFUSAL_CHARS`, so it is safe to print. Never raises.
    """
    try:
        obj = _decode_object(frame)
    except Exception:  # noqa: BLE001 - a "no" answer is enough here
        return None
    return _refusal_message(obj)


# Key schedule -----------------------------------------------------------------


def _spake2_identities(room: bytes) -> tuple[bytes, bytes]:
    """SPAKE2 idA (consumer) and idB (provider): protocol, version, role, room.

    The fixed prefix makes the room the unambiguous rest of the identity, so
    no two (role, room) pairs share one.
    """
    base = b"imprint-sync/%d/" % PROTOCOL_VERSION
    return base + b"consumer/" + room, base + b"provider/" + room


def _transcript(room: bytes, consumer_msg: bytes, provider_msg: bytes) -> bytes:
    """Hash binding version, room and both PAKE messages, ordered by role."""
    digest = hashlib.sha256()
    for part in (
        b"imprint-sync transcript",
        PROTOCOL_VERSION.to_bytes(4, "big"),
        room,
        consumer_msg,
        provider_msg,
    ):
        # Length prefixes: no two different field tuples hash the same input.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _hkdf(key: bytes, *, salt: bytes, info: bytes, length: int = _KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def _verification_string(raw: bytes) -> str:
    text = raw.hex()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


class ChannelSetup:
    """One side's PAKE and key confirmation, before any data.

    Usage (either side; the frames cross in flight)::

        setup = ChannelSetup(pin=pin, room=room, role="consumer")
        send(setup.start())
        send(setup.receive_pake(receive()))
        channel = setup.receive_confirm(receive())

    Calling the steps out of order is a bug and raises :class:`RuntimeError`.
    After any error the setup is spent.

    Args:
        pin: The session PIN, 8 characters from A-Z a-z 0-9.
        room: The relay room id; binding it means a frame from another room
            never confirms.
        role: This side's role.

    Raises:
        InputError: The PIN does not have the PIN format (it is not echoed).
        ValueError: Empty room or unknown role (a bug in the caller).
    """

    def __init__(self, *, pin: str, room: str, role: Role) -> None:
        if not (
            isinstance(pin, str) and len(pin) == PIN_LENGTH and set(pin) <= _PIN_ALPHABET
        ):
            raise InputError(f"the PIN must be {PIN_LENGTH} characters from A-Z, a-z and 0-9")
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty string")
        if role not in ("provider", "consumer"):
            raise ValueError(f"role must be 'provider' or 'consumer', not {role!r}")
        self.role: Role = role
        self.room = room
        self._room_bytes = room.encode("utf-8")
        id_consumer, id_provider = _spake2_identities(self._room_bytes)
        # Asymmetric SPAKE2, not SPAKE2_Symmetric: the relay URL fixes each
        # side's role (?role=provider|consumer), so the roles are known before
        # the first frame. A and B blind with different points (M, N) and
        # spake2 refuses an A message at A, so a relay that reflects a side's
        # own message back is caught before any key is derived, and the
        # per-role identities bind the role into the key as well.
        spake_class = SPAKE2_A if role == "consumer" else SPAKE2_B
        self._spake: SPAKE2_A | SPAKE2_B | None = spake_class(
            pin.encode("ascii"), idA=id_consumer, idB=id_provider
        )
        self._state: Literal["new", "started", "confirming", "done", "failed"] = "new"
        self._our_pake = b""
        self._transcript = b""
        self._keys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"<ChannelSetup role={self.role} room={self.room!r} state={self._state}>"

    def _expect(self, state: str, step: str) -> None:
        if self._state != state:
            raise RuntimeError(f"ChannelSetup.{step}() called in state {self._state!r}")

    def start(self) -> bytes:
        """Our first frame: the SPAKE2 message, naming the protocol version.

        Returns:
            UTF-8 JSON ``{"imprint": 1, "pake": "<base64>"}`` for a text frame.
        """
        self._expect("new", "start")
        assert self._spake is not None
        self._our_pake = self._spake.start()
        self._state = "started"
        return msgspec.json.encode(
            _PakeFrame(imprint=PROTOCOL_VERSION, pake=_b64encode(self._our_pake))
        )

    def receive_pake(self, frame: bytes | str) -> bytes:
        """Take the peer's first frame; derive the keys; answer with our confirmation.

        Args:
            frame: The peer's ``{"imprint": 1, "pake": ...}`` frame.

        Returns:
            UTF-8 JSON ``{"imprint": 1, "confirm": "<base64 HMAC>"}`` for a text frame.

        Raises:
            UnsupportedVersionError: The frame names another protocol version.
            ProtocolError: Not JSON, wrong shape, an invalid or reflected
                SPAKE2 message, or a refusal from the peer.
        """
        self._expect("started", "receive_pake")
        self._state = "failed"  # until this step completes
        assert self._spake is not None
        parsed = _decode_handshake(frame, _PakeFrame, "PAKE")
        peer_pake = _b64decode(parsed.pake, length=_PAKE_MESSAGE_BYTES, what="PAKE message")
        if hmac.compare_digest(peer_pake, self._our_pake):
            raise ProtocolError("received our own PAKE message back: the relay reflected it")
        spake, self._spake = self._spake, None  # holds the PIN; keep it no longer
        try:
            shared = spake.finish(peer_pake)
        except (SPAKEError, ValueError, NotOnCurve) as exc:
            raise ProtocolError(f"invalid PAKE message from the peer: {exc}") from None
        if self.role == "consumer":
            consumer_msg, provider_msg = self._our_pake, peer_pake
        else:
            consumer_msg, provider_msg = peer_pake, self._our_pake
        transcript = _transcript(self._room_bytes, consumer_msg, provider_msg)
        self._transcript = transcript
        self._keys = {
            name: _hkdf(shared, salt=transcript, info=info)
            for name, info in (
                ("p2c", b"imprint p2c"),
                ("c2p", b"imprint c2p"),
                ("confirm_provider", b"imprint confirm provider"),
                ("confirm_consumer", b"imprint confirm consumer"),
            )
        }
        self._keys["verify"] = _hkdf(
            shared, salt=transcript, info=b"imprint verify", length=_VERIFY_BYTES
        )
        ours = self._keys["confirm_provider" if self.role == "provider" else "confirm_consumer"]
        mac = hmac.new(ours, transcript, hashlib.sha256).digest()
        self._state = "confirming"
        return msgspec.json.encode(_ConfirmFrame(imprint=PROTOCOL_VERSION, confirm=_b64encode(mac)))

    def receive_confirm(self, frame: bytes | str) -> SecureChannel:
        """Check the peer's key confirmation; on success the channel is ready.

        Args:
            frame: The peer's ``{"imprint": 1, "confirm": ...}`` frame.

        Returns:
            The :class:`SecureChannel` for this session.

        Raises:
            AuthError: The confirmation does not match: wrong PIN, other room,
                or a relay that altered the handshake.
            UnsupportedVersionError: The frame names another protocol version.
            ProtocolError: Not JSON, wrong shape, or a refusal from the peer.
        """
        self._expect("confirming", "receive_confirm")
        self._state = "failed"
        keys, self._keys = self._keys, {}  # one way or the other, the setup is done with them
        parsed = _decode_handshake(frame, _ConfirmFrame, "key confirmation")
        peer_mac = _b64decode(parsed.confirm, length=_CONFIRM_BYTES, what="key confirmation")
        theirs = keys["confirm_consumer" if self.role == "provider" else "confirm_provider"]
        expected = hmac.new(theirs, self._transcript, hashlib.sha256).digest()
        if not hmac.compare_digest(peer_mac, expected):
            raise AuthError(
                "key confirmation failed: wrong PIN, or the relay tampered with the handshake"
            )
        send, receive = ("p2c", "c2p") if self.role == "provider" else ("c2p", "p2c")
        self._state = "done"
        return SecureChannel(
            send_key=keys[send],
            receive_key=keys[receive],
            transcript=self._transcript,
            verification=_verification_string(keys["verify"]),
        )


# Sealed frames ----------------------------------------------------------------


def _nonce(counter: int) -> bytes:
    # Each direction has its own key, so the counter alone is a unique nonce.
    return counter.to_bytes(_NONCE_BYTES, "big")


class SecureChannel:
    """Seals and opens the binary frames of one confirmed session.

    Frame: ``counter (8 bytes big-endian) || tag (16) || ciphertext``, the box
    being XSalsa20-Poly1305 under this direction's key with the counter as
    nonce. Counters start at 0 in each direction and go up by one per frame;
    :meth:`open` accepts only the next one, so any replay, reorder, gap,
    truncation, alteration or reflection raises :class:`TamperedFrameError`,
    after which every call raises.

    Normally obtained from :meth:`ChannelSetup.receive_confirm`; tests may
    build one from fixed keys.

    Attributes:
        verification: Short string both users may compare to rule out a
            relay that knew the PIN, e.g. ``"4f2a-91c0-7d3b"``.
        transcript: 32-byte hash binding room, version and both PAKE
            messages; the HELLO is signed over it.
        COUNTER_LIMIT: Highest counter this side will seal or accept.
    """

    COUNTER_LIMIT: ClassVar[int] = 2**64 - 1

    def __init__(
        self, *, send_key: bytes, receive_key: bytes, transcript: bytes, verification: str
    ) -> None:
        self.verification = verification
        self.transcript = transcript
        self._send_box = nacl.secret.SecretBox(send_key)
        self._receive_box = nacl.secret.SecretBox(receive_key)
        self._send_counter = 0
        self._receive_counter = 0
        self._failure: TamperedFrameError | None = None

    def __repr__(self) -> str:
        state = "dead" if self._failure else "open"
        return (
            f"<SecureChannel {state} sent={self._send_counter} "
            f"received={self._receive_counter} verification={self.verification}>"
        )

    @property
    def is_dead(self) -> bool:
        """True once a bad frame was received; every later call raises."""
        return self._failure is not None

    def _raise_if_dead(self) -> None:
        if self._failure is not None:
            raise TamperedFrameError(
                f"secure channel closed after a rejected frame ({self._failure})"
            )

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and number one frame for the peer.

        Returns:
            The binary frame to send.

        Raises:
            TamperedFrameError: The channel is dead.
            ChannelExhaustedError: :attr:`COUNTER_LIMIT` frames were sealed.
        """
        self._raise_if_dead()
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise TypeError(f"seal() takes bytes, not {type(plaintext).__name__}")
        counter = self._send_counter
        if counter > self.COUNTER_LIMIT:
            raise ChannelExhaustedError(
                f"sealed {counter} frames, the most one channel may number; start a new session"
            )
        box = self._send_box.encrypt(bytes(plaintext), _nonce(counter)).ciphertext
        self._send_counter = counter + 1
        return counter.to_bytes(_COUNTER_BYTES, "big") + box

    def open(self, frame: bytes) -> bytes:
        """Check and decrypt the peer's next frame.

        Returns:
            The plaintext.

        Raises:
            TamperedFrameError: The frame is not exactly the next genuine one
                from the peer; the channel is dead from now on.
        """
        self._raise_if_dead()
        try:
            return self._open(frame)
        except TamperedFrameError as exc:
            self._failure = exc
            raise

    def _open(self, frame: bytes) -> bytes:
        expected = self._receive_counter
        if isinstance(frame, str):
            raise TamperedFrameError(
                f"text frame where sealed frame {expected} was expected: "
                "injected by the relay or a peer bug"
            )
        data = bytes(frame)
        if len(data) < _COUNTER_BYTES + _TAG_BYTES:
            what = "counter" if len(data) < _COUNTER_BYTES else "authenticator"
            raise TamperedFrameError(
                f"sealed frame {expected} truncated to {len(data)} bytes, "
                f"too short for its {what}: cut by the relay"
            )
        counter = int.from_bytes(data[:_COUNTER_BYTES], "big")
        if counter < expected:
            raise TamperedFrameError(
                f"frame {counter} arrived again where {expected} was expected: "
                "replayed by the relay"
            )
        if counter > expected:
            raise TamperedFrameError(
                f"frame {counter} arrived where {expected} was expected: "
                "dropped, reordered or altered by the relay"
            )
        if counter > self.COUNTER_LIMIT:
            raise TamperedFrameError(
                f"frame {counter} is past the counter limit {self.COUNTER_LIMIT}"
            )
        box, nonce = data[_COUNTER_BYTES:], _nonce(counter)
        try:
            plaintext = self._receive_box.decrypt(box, nonce)
        except nacl.exceptions.CryptoError:
            raise TamperedFrameError(self._diagnose(counter, box, nonce)) from None
        self._receive_counter = counter + 1
        return plaintext

    def _diagnose(self, counter: int, box: bytes, nonce: bytes) -> str:
        """Name why an authenticated decryption failed."""
        try:
            self._send_box.decrypt(box, nonce)
        except nacl.exceptions.CryptoError:
            return f"frame {counter} failed authentication: altered by the relay"
        return (
            f"frame {counter} was sealed with this side's own key (the other "
            "direction's): the relay reflected one of our frames back"
        )
