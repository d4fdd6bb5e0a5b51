"""Device identity: the SPEC fingerprint in DATA_DIR/device_id.txt, backed by a key."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest

from imprint.errors import ConfigError
from imprint.identity import fingerprint_of, host_info, load_identity, verify_signature


def test_first_use_creates_key_and_device_id(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    identity = load_identity(data_dir)
    assert re.fullmatch(r"[0-9a-f]{8}", identity.fingerprint)
    assert (data_dir / "device_id.txt").read_text().strip() == identity.fingerprint
    assert identity.fingerprint == hashlib.sha256(identity.public_key).hexdigest()[:8]
    assert stat.S_IMODE((data_dir / "device_key").stat().st_mode) == 0o600


def test_fingerprint_is_stable_across_loads(tmp_path: Path) -> None:
    first = load_identity(tmp_path)
    second = load_identity(tmp_path)
    assert second.public_key == first.public_key
    assert second.fingerprint == first.fingerprint
    assert load_identity(tmp_path / "other").fingerprint != first.fingerprint


def test_a_tampered_device_id_is_rewritten_from_the_key(tmp_path: Path) -> None:
    identity = load_identity(tmp_path)
    (tmp_path / "device_id.txt").write_text("deadbeef\n")
    assert load_identity(tmp_path).fingerprint == identity.fingerprint
    assert (tmp_path / "device_id.txt").read_text().strip() == identity.fingerprint


def test_a_corrupt_key_is_a_config_error_and_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "device_key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="corrupt"):
        load_identity(tmp_path)
    assert (tmp_path / "device_key").read_bytes() == b"short"


def test_unwritable_location_is_a_config_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a dir")
    with pytest.raises(ConfigError, match="device identity"):
        load_identity(a_file / "data")


def test_signatures_verify_only_with_the_signing_key(tmp_path: Path) -> None:
    me = load_identity(tmp_path / "me")
    other = load_identity(tmp_path / "other")
    signature = me.sign(b"transcript")
    assert verify_signature(me.public_key, b"transcript", signature)
    assert not verify_signature(me.public_key, b"transcript!", signature)
    assert not verify_signature(other.public_key, b"transcript", signature)
    assert not verify_signature(b"too short", b"transcript", signature)
    assert fingerprint_of(me.public_key) == me.fingerprint


def test_host_info_is_filled() -> None:
    info = host_info()
    assert info.hostname and info.user and info.os
