"""What a person reads: the sync summary, from the same event `--json` prints."""

from __future__ import annotations

import io
import json
import sys

import pytest

from imprint.commands.render import HumanReporter, format_stats
from imprint.messages.events import (
    Notice,
    Progress,
    Reconciled,
    Stats,
    decode_event,
    encode_event,
)


def test_the_human_summary_names_each_dataset_and_direction() -> None:
    line = json.dumps({"event": "stats", "role": "provider", "mode": "encrypted",
                       "received": {"memories": {"inserted": 3, "skipped": 2, "rejected": 2, "updated": 1},
                                    "facts": {"inserted": 1, "skipped": 0, "rejected": 0, "ended": 1}},
                       "sent": {"memories": {"sent": 5, "inserted": 4, "skipped": 1, "rejected": 0},
                                "facts": {"sent": 1}},
                       "forgotten": 0, "vectors_reused": 0, "forgets_refused": 0, "forgets_kept": 0})
    event = decode_event(line)
    assert isinstance(event, Stats)
    assert json.loads(encode_event(event)) == json.loads(line)  # one encoding for --json and SSE
    assert format_stats(event).splitlines() == [
        "Sync complete.",
        "  received: memories 3 new, 1 already here, 1 updated, 2 refused; facts 1 new, 0 already here, 1 ended",
        "  sent:     memories 5 (4 new, 1 already there); facts 1",
    ]
    forgot = decode_event(line.replace('"forgotten": 0', '"forgotten": 7'))
    assert format_stats(forgot).splitlines()[-1] == \
        "  forgotten here, as on the other machine: 7 (kept in 'imprint trash' for 30 days)"
    guarded = decode_event(line.replace('"forgets_refused": 0', '"forgets_refused": 5000')
                           .replace('"forgets_kept": 0', '"forgets_kept": 150'))
    assert format_stats(guarded).splitlines()[-2:] == [
        "  kept, though the other machine forgot them: 150 (over --max-forget)",
        "  tombstones refused (not the other machine's to send, or dated ahead): 5,000",
    ]


def test_the_summary_says_how_many_vectors_came_from_the_other_machine() -> None:
    line = json.dumps({"event": "stats", "role": "consumer", "mode": "encrypted",
                       "received": {"memories": {"inserted": 40, "skipped": 0, "rejected": 0, "updated": 0},
                                    "facts": {"inserted": 0, "skipped": 0, "rejected": 0, "ended": 0}},
                       "sent": {"memories": {"sent": 0}, "facts": {"sent": 0}}, "forgotten": 0, "vectors_reused": 38})
    assert format_stats(decode_event(line)).splitlines()[-1] == \
        "  vectors taken from the other machine (same model; each checked here in the background): 38"
    notice = decode_event(json.dumps({"event": "notice", "message": "the other machine's vectors are not used"}))
    assert json.loads(encode_event(notice)) == {"event": "notice", "message": "the other machine's vectors are not used"}


class Terminal(io.StringIO):
    """What a terminal shows, written to as stderr is (tqdm draws bars on a tty only)."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sync_events() -> list:
    return [
        Progress(direction="receive", dataset="memories", done=0, total=2000),
        Progress(direction="receive", dataset="memories", done=500, total=2000),
        Notice(message="the other machine's vectors are not used"),
        Progress(direction="store", dataset="memories", done=500, total=2000),
        Progress(direction="receive", dataset="memories", done=2000, total=2000),
        Reconciled(send={"memories": 3}, receive={"memories": 2000}, round_trips=2),
        Progress(direction="send", dataset="memories", done=3, total=3, confirmed=False),
        Progress(direction="store", dataset="memories", done=2000, total=2000),
    ]


def test_piped_a_sync_prints_plain_progress_lines_now_and_then_and_when_done(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = Clock()
    report = HumanReporter(clock=clock)  # stdout and stderr are not terminals under pytest: no bars
    assert report.use_bars is False
    for n, event in enumerate(_sync_events()):
        clock.now = n * 2.0  # a progress line at most every 5 s per dataset and direction
        report(event)
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
    assert lines == [
        "receiving memories: received 0",
        "the other machine's vectors are not used",
        "receiving memories: received 500, stored 500 of 2,000",
        "Compared in 2 round trips: to send 3 memories; to receive 2,000 memories",
        "sending memories: sent 3",
        "receiving memories: received 2,000, stored 2,000 of 2,000",
    ]


def test_on_a_terminal_a_line_never_lands_inside_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    report = HumanReporter(bars=True)
    for event in _sync_events():
        report(event)
    report.close()
    shown = screen.getvalue()
    assert "receiving memories" in shown and "sending memories" in shown  # bars were drawn
    for line in ("the other machine's vectors are not used\n",
                 "Compared in 2 round trips: to send 3 memories; to receive 2,000 memories\n"):
        at = shown.index(line)
        # tqdm lifted the bars first: the line starts a fresh line, never after a bar's text
        assert shown[at - 1] in "\r\n", repr(shown[max(0, at - 80):at + len(line)])
