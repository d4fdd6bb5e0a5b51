"""The trust list: `DATA_DIR/trusted_devices.json`, shared by CLI and dashboard.

The file is a JSON array of `{"fingerprint","hostname","added"}`; we add
`public_key` (hex Ed25519) so a trusted fingerprint cannot be claimed by a
device holding another key. Entries without a key (written by Imprint's own
clients or a plaintext session) match on fingerprint alone. Imprint's Python
dashboard writes the keys capitalized (`Fingerprint`, `Hostname`, `Added`):
both spellings are read, ours is written. Fingerprints are compared in lower
case, so a hand-edited `0BADC0DE` is the same device as `0badc0de`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from imprint.errors import ConfigError

TrustStatus = Literal["trusted", "unknown", "key-mismatch"]
_lock = threading.Lock()


class TrustedDevice(msgspec.Struct, frozen=True, omit_defaults=True):
    fingerprint: str
    hostname: str = ""
    added: int | float = 0
    public_key: str = ""


_list_decoder = msgspec.json.Decoder(list[dict[str, Any]])
_FIELDS = {"fingerprint": "fingerprint", "hostname": "hostname", "added": "added", "public_key": "public_key",
           "publickey": "public_key"}


def _entry(raw: dict[str, Any]) -> TrustedDevice:
    """One entry in either spelling (`fingerprint` or `Fingerprint`, …), fingerprint in lower case."""
    fields = {}
    for key, value in raw.items():
        name = _FIELDS.get(key.lower().replace("-", "_")) if isinstance(key, str) else None
        if name is not None:
            fields.setdefault(name, value)
    device = msgspec.convert(fields, TrustedDevice)
    return msgspec.structs.replace(device, fingerprint=device.fingerprint.strip().lower())


class TrustList:
    """Read and change the trust list file; every write is atomic (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[TrustedDevice]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read the trust list {self.path}: {exc.strerror or exc}") from None
        if not data.strip():
            return []
        try:
            return [_entry(raw) for raw in _list_decoder.decode(data)]
        except msgspec.DecodeError as exc:
            raise ConfigError(f"the trust list {self.path} is malformed ({exc}); fix or remove it") from None

    def _save(self, devices: list[TrustedDevice]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(json.dumps([msgspec.to_builtins(d) for d in devices], indent=2).encode() + b"\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"cannot write the trust list {self.path}: {exc.strerror or exc}") from None

    def status(self, fingerprint: str, public_key: str = "") -> TrustStatus:
        """Whether a peer showing this fingerprint (and key) is trusted."""
        fingerprint = fingerprint.lower()
        for device in self.load():
            if device.fingerprint == fingerprint:
                if device.public_key and device.public_key != public_key:
                    return "key-mismatch"
                return "trusted"
        return "unknown"

    def add(self, *, fingerprint: str, hostname: str, public_key: str = "") -> TrustedDevice:
        """Trust a device (replacing an entry with the same fingerprint)."""
        fingerprint = fingerprint.lower()
        with _lock:
            devices = [d for d in self.load() if d.fingerprint != fingerprint]
            entry = TrustedDevice(fingerprint=fingerprint, hostname=hostname, added=int(time.time()), public_key=public_key)
            devices.append(entry)
            self._save(devices)
        return entry

    def remove(self, fingerprint: str) -> bool:
        """Forget a device; False if it was not on the list."""
        fingerprint = fingerprint.strip().lower()
        with _lock:
            devices = self.load()
            kept = [d for d in devices if d.fingerprint != fingerprint]
            if len(kept) == len(devices):
                return False
            self._save(kept)
        return True
