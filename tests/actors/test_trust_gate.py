"""TrustGate alone: a scripted approver, a real trust list file, recording peers.

`Approve` goes in with a Recorder as `reply_to` (standing in for the
Handshake); the session's listener is another Recorder. The approver is a
script that records what it was shown and answers, or raises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imprint.actors.trust_gate import TrustGate, parse_answer
from imprint.messages.session import (
    ApprovalRequired,
    Approve,
    AutoAccepted,
    Decision,
    PeerInfo,
)
from imprint.messages.store import Ping
from imprint.trust import TrustList

from .fakes import Recorder, ScriptedApprover, stopping_new_actors

pytestmark = pytest.mark.timeout(30)

KEY = "11" * 32
OTHER_KEY = "22" * 32
PEER = PeerInfo(hostname="bob-laptop", user="bob", os="Linux 6.8", fingerprint="0badcafe", public_key=KEY)


class Rig:
    def __init__(self, trust_path: Path, approver: ScriptedApprover) -> None:
        self.trust_path = trust_path
        self.trust_list = TrustList(trust_path)
        self.approver = approver
        self.listener = Recorder("session")
        self.reply_to = Recorder("handshake")
        self.gate = TrustGate.start(trust_list=self.trust_list, approver=approver, listener=self.listener)
        assert self.gate.ask(Ping(), timeout=10) is True

    def approve(self, peer: PeerInfo = PEER) -> Decision:
        self.gate.tell(Approve(peer=peer, reply_to=self.reply_to))
        decision = self.reply_to.wait_for(Decision)
        assert self.gate.ask(Ping(), timeout=10) is True  # and it is still alive
        return decision

    def file(self) -> Any:
        return json.loads(self.trust_path.read_text())


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    with stopping_new_actors():
        yield


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., Rig]:
    def make(answer: str | BaseException | None, *, trusted: list[dict[str, Any]] | None = None) -> Rig:
        path = tmp_path / "trusted_devices.json"
        if trusted is not None:
            path.write_text(json.dumps(trusted))
        return Rig(path, ScriptedApprover(answer))

    return make


@pytest.mark.parametrize(
    ("answer", "decision"),
    [("accept", "accept"), ("y", "accept"), ("reject", "reject"), ("n", "reject"), ("", "reject"), (None, "reject")],
)
def test_an_unknown_peer_is_shown_to_the_approver_and_its_answer_is_told_back(
    make_rig: Callable[..., Rig], answer: str | None, decision: str
) -> None:
    rig = make_rig(answer)

    assert rig.approve() == Decision(decision=decision, auto=False)
    assert rig.listener.messages == [ApprovalRequired(peer=PEER, warning="")]
    assert rig.approver.calls == [(PEER, "")]
    assert rig.reply_to.messages == [Decision(decision=decision)]
    assert not rig.trust_path.exists()  # only "trust" writes the list


def test_an_approver_that_raises_rejects(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(RuntimeError("the dashboard went away"))

    assert rig.approve() == Decision(decision="reject")
    assert rig.approver.calls == [(PEER, "")]
    assert not rig.trust_path.exists()


def test_trust_accepts_and_writes_the_trust_list(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("trust")
    before = int(time.time())

    assert rig.approve() == Decision(decision="trust")

    entries = rig.file()
    assert entries == [{"fingerprint": "0badcafe", "hostname": "bob-laptop", "added": entries[0]["added"], "public_key": KEY}]
    assert isinstance(entries[0]["added"], int) and before <= entries[0]["added"] <= time.time()
    assert rig.trust_list.status("0badcafe", KEY) == "trusted"


def test_trust_keeps_other_entries_and_replaces_one_with_the_same_fingerprint(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(
        "t",
        trusted=[
            {"fingerprint": "aaaaaaaa", "hostname": "desk", "added": 1700000000},
            {"fingerprint": "0badcafe", "hostname": "old-name", "added": 1600000000, "public_key": OTHER_KEY},
        ],
    )

    assert rig.approve().decision == "trust"
    entries = rig.file()
    assert [(e["fingerprint"], e["hostname"], e.get("public_key")) for e in entries] == [
        ("aaaaaaaa", "desk", None),
        ("0badcafe", "bob-laptop", KEY),
    ]


def test_a_trusted_fingerprint_is_accepted_without_asking(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("reject", trusted=[{"fingerprint": "0badcafe", "hostname": "bob-laptop", "added": 1700000000, "public_key": KEY}])

    assert rig.approve() == Decision(decision="accept", auto=True)
    assert rig.listener.messages == [AutoAccepted(peer=PEER)]
    assert rig.approver.calls == []


def test_an_entry_without_a_key_from_the_original_matches_on_fingerprint(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("reject", trusted=[{"fingerprint": "0badcafe", "hostname": "bob-laptop", "added": 1700000000}])

    assert rig.approve() == Decision(decision="accept", auto=True)
    assert rig.listener.messages == [AutoAccepted(peer=PEER)]


@pytest.mark.parametrize("shown_key", [OTHER_KEY, ""], ids=["other-key", "no-key-plaintext"])
def test_a_trusted_fingerprint_with_a_different_key_is_not_auto_accepted(make_rig: Callable[..., Rig], shown_key: str) -> None:
    rig = make_rig("reject", trusted=[{"fingerprint": "0badcafe", "hostname": "bob-laptop", "added": 1700000000, "public_key": KEY}])
    impostor = PeerInfo(hostname="bob-laptop", user="bob", os="Linux 6.8", fingerprint="0badcafe", public_key=shown_key)

    assert rig.approve(impostor) == Decision(decision="reject", auto=False)

    [event] = rig.listener.messages
    assert isinstance(event, ApprovalRequired) and event.peer == impostor
    assert "DIFFERENT key" in event.warning and "0badcafe" in event.warning
    assert rig.approver.calls == [(impostor, event.warning)]
    # The genuine device stays trusted.
    assert rig.trust_list.status("0badcafe", KEY) == "trusted"


def test_a_trust_list_that_cannot_be_written_still_answers(make_rig: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make_rig("trust")
    rig.trust_list.path = tmp_path / "missing-dir" / "trusted_devices.json"

    decision = rig.approve()

    # The user accepted; remembering failed, so it is this session only.
    assert decision == Decision(decision="accept")
    assert not rig.trust_list.path.exists()


def test_an_unreadable_trust_list_asks_with_a_warning_instead_of_hanging(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("y")
    rig.trust_path.write_text('{"not": "a list"')

    assert rig.approve() == Decision(decision="accept", auto=False)
    [event] = rig.listener.messages
    assert isinstance(event, ApprovalRequired) and "trust list" in event.warning and "malformed" in event.warning
    assert rig.approver.calls == [(PEER, event.warning)]


@pytest.mark.parametrize(
    ("answer", "decision"),
    [
        ("y", "accept"),
        ("yes", "accept"),
        ("Y\n", "accept"),
        ("  YES  \n", "accept"),
        ("accept", "accept"),
        ("t", "trust"),
        ("trust", "trust"),
        ("T\n", "trust"),
        ("n", "reject"),
        ("no", "reject"),
        ("", "reject"),  # EOF: readline() returns ""
        ("\n", "reject"),  # empty line
        (None, "reject"),
        ("yess", "reject"),
        ("ye", "reject"),
        ("trusted", "reject"),
        ("maybe", "reject"),
    ],
)
def test_parse_answer(answer: str | None, decision: str) -> None:
    assert parse_answer(answer) == decision
