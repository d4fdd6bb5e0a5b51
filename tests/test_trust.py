"""The trust list file: both spellings of Imprint's clients are read, ours is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imprint.errors import ConfigError
from imprint.trust import TrustList


def test_the_python_dashboards_capitalized_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "trusted_devices.json"
    path.write_text(json.dumps([{"Fingerprint": "0badc0de", "Hostname": "old-laptop", "Added": 1700000000}]))
    trust = TrustList(path)
    [device] = trust.load()
    assert (device.fingerprint, device.hostname, device.added) == ("0badc0de", "old-laptop", 1700000000)
    assert trust.status("0badc0de") == "trusted"
    trust.add(fingerprint="12345678", hostname="new", public_key="ab" * 32)
    written = json.loads(path.read_text())
    assert written[0] == {"fingerprint": "0badc0de", "hostname": "old-laptop", "added": 1700000000}
    assert written[1]["fingerprint"] == "12345678" and written[1]["public_key"] == "ab" * 32


def test_an_uppercase_fingerprint_edited_by_hand_matches_and_can_be_removed(tmp_path: Path) -> None:
    path = tmp_path / "trusted_devices.json"
    path.write_text(json.dumps([{"fingerprint": "0BADC0DE", "hostname": "h", "added": 1}]))
    trust = TrustList(path)
    assert trust.status("0badc0de") == "trusted"
    assert trust.remove("0BadC0de") is True
    assert trust.load() == []


def test_a_malformed_file_is_a_config_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "trusted_devices.json"
    path.write_text('{"fingerprint": "not a list"}')
    with pytest.raises(ConfigError, match="malformed"):
        TrustList(path).load()
    assert path.read_text() == '{"fingerprint": "not a list"}'
