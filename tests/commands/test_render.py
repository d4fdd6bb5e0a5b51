"""What a person reads: the sync summary, from the same event `--json` prints."""

from __future__ import annotations

import json

from imprint.commands.render import format_stats
from imprint.messages.events import Stats, decode_event, encode_event


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
        "  vectors taken from the other machine (same model, checked): 38"
    notice = decode_event(json.dumps({"event": "notice", "message": "the other machine's vectors are not used"}))
    assert json.loads(encode_event(notice)) == {"event": "notice", "message": "the other machine's vectors are not used"}
