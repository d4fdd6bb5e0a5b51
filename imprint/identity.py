"""This device's identity: an Ed25519 key and the 8-hex fingerprint derived from it.

SPEC asks for a stable 8-character lowercase hex id at `DATA_DIR/device_id.txt`.
Eight hex digits are only 32 bits, so a fingerprint alone is easy to collide
with; we derive it from a persistent Ed25519 public key and the trust list
keeps the whole key, so a device that claims a trusted fingerprint must also
hold the matching private key (like Syncthing's device ids).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from imprint.errors import ConfigError

KEY_FILE = "device_key"
ID_FILE = "device_id.txt"


def fingerprint_of(public_key: bytes) -> str:
    """The SPEC fingerprint of a public key: first 8 hex of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:8]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `message`."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class DeviceIdentity:
    """The key pair and fingerprint of this device."""

    signing_key: SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


_identity_lock = threading.Lock()


def load_identity(data_dir: Path) -> DeviceIdentity:
    """Load this device's key, creating key and `device_id.txt` on first use.

    Safe to call from several threads or processes at once: the key is created
    with O_EXCL, and whoever loses that race reads the winner's key.
    """
    key_path = data_dir / KEY_FILE
    id_path = data_dir / ID_FILE
    with _identity_lock:
        try:
            identity = _read_key(key_path)
            if identity is None:
                data_dir.mkdir(parents=True, exist_ok=True)
                identity = DeviceIdentity(SigningKey.generate())
                # Written whole under a private name, then linked into place: a reader
                # never sees half a key, and link() fails if another process won.
                tmp = key_path.with_name(f"{KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(bytes(identity.signing_key))
                try:
                    os.link(tmp, key_path)
                except FileExistsError:
                    identity = _read_key(key_path) or identity  # another process made it first
                else:
                    logger.info("created device key {} (fingerprint {})", key_path, identity.fingerprint)
                finally:
                    tmp.unlink(missing_ok=True)
            recorded = id_path.read_text().strip() if id_path.exists() else ""
            if recorded != identity.fingerprint:
                if recorded:
                    logger.warning("device_id.txt said {}; rewriting it from the device key", recorded)
                tmp = id_path.with_name(f"{ID_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(identity.fingerprint + "\n")
                tmp.replace(id_path)
        except OSError as exc:
            raise ConfigError(f"cannot read or create the device identity in {data_dir}: {exc.strerror or exc}") from None
    return identity


def _read_key(key_path: Path) -> DeviceIdentity | None:
    try:
        seed = key_path.read_bytes()
    except FileNotFoundError:
        return None
    if len(seed) != 32:
        raise ConfigError(f"{key_path} is corrupt (expected 32 bytes); move it away to create a new identity")
    return DeviceIdentity(SigningKey(seed))


def read_fingerprint(data_dir: Path) -> str | None:
    """This device's fingerprint if its key exists; creates nothing (for read-only commands)."""
    try:
        seed = (data_dir / KEY_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the device key in {data_dir}: {exc.strerror or exc}") from None
    if len(seed) != 32:
        raise ConfigError(f"{data_dir / KEY_FILE} is corrupt (expected 32 bytes); move it away to create a new identity")
    return DeviceIdentity(SigningKey(seed)).fingerprint


@dataclass(frozen=True, kw_only=True)
class HostInfo:
    """What a peer shows the other side's user before approval."""

    hostname: str
    user: str
    os: str


def host_info() -> HostInfo:
    """Hostname, user and OS of this machine, for the HELLO."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return HostInfo(hostname=socket.gethostname() or "unknown", user=user, os=f"{platform.system()} {platform.release()}".strip())
