"""What commands print: results on stdout (human lines, or one JSON object per
line with `--json`), remarks on stderr, a sync's events as lines and progress
bars, and the approval prompt.

Everything that reaches the terminal goes through here, and is made safe on
the way (:mod:`imprint.text`): a peer's hostname or a forged frame can be shown,
never obeyed.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

import msgspec

from imprint.messages.events import (
    ApprovalRequired,
    AutoAccepted,
    ConfirmRequired,
    Event,
    ForgetConfirmRequired,
    Notice,
    PeerConnected,
    Progress,
    Reconciled,
    Room,
    SentFigures,
    Stats,
    Waiting,
    encode_event,
)
from imprint.messages.session import PeerInfo
from imprint.text import clip, visible

_encoder = msgspec.json.Encoder()

Reporter = Callable[[Event], None]


class Output:
    """Prints results on stdout; with `json_mode`, JSON lines and nothing else."""

    def __init__(self, *, json_mode: bool, stream: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout

    def result(self, obj: Any, human: str | None = None) -> None:
        """One result: `obj` as a JSON line in json mode, else the `human` line (if any)."""
        if self.json_mode:
            self.stream.write(_encoder.encode(obj).decode() + "\n")  # JSON escapes control characters
        elif human is not None:
            self.stream.write(visible(human) + "\n")
        self.stream.flush()

    def event(self, event: Event) -> None:
        """One event as its JSON line (json mode only)."""
        if self.json_mode:
            self.stream.write(encode_event(event).decode() + "\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        """Human-only text (suppressed in json mode)."""
        if not self.json_mode:
            self.stream.write(visible(text) + "\n")
            self.stream.flush()


def confirm(question: str, *, yes: bool) -> None:
    """Ask `question` on the terminal (y/N) unless `yes`; InputError if declined or
    if there is no terminal to ask on (a script must say --yes)."""
    from imprint.errors import InputError

    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question.rstrip('?')}: not confirmed (no terminal to ask on); add --yes")
    sys.stderr.write(visible(question) + " [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise InputError("cancelled; nothing was changed")


def note(text: str) -> None:
    """A remark for the human at the terminal, on stderr (never pollutes stdout). Control
    characters (from a peer's hostname, a forged frame…) are shown as escapes, never obeyed."""
    sys.stderr.write(visible(text) + "\n")
    sys.stderr.flush()


def say(text: str) -> None:
    """A line for the human on stdout, made safe the same way."""
    sys.stdout.write(visible(text) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- a sync's events


#: Without bars (output piped or redirected), a progress line per direction and dataset
#: at most this often, and one when it completes.
PLAIN_INTERVAL = 5.0


def _terminals() -> bool:
    """Bars only where a person watches both streams (stdout piped or redirected: lines)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class HumanReporter:
    """Turns a sync's events into terminal lines and progress bars (stderr).

    Two bars per direction at most: what comes from the other machine
    (stored here, with received as a note) and what goes to it (what it
    stored, with what it confirmed, or what left, as a note). Lines printed
    while bars are up go through tqdm, which lifts the bars and puts them back
    below, so a line never lands inside a bar (tmux, narrow terminals). When
    stdout or stderr is not a terminal there are no bars: a plain progress line
    at most every :data:`PLAIN_INTERVAL` seconds, and one when a dataset is done.
    """

    def __init__(self, *, prefix: str = "", bars: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.use_bars = _terminals() if bars is None else bars
        self.clock = clock
        self.bars: dict[tuple[str, str], Any] = {}
        self.notes: dict[tuple[str, str], dict[str, str]] = {}
        self._printed: dict[tuple[str, str], tuple[float, str]] = {}

    def _write(self, text: str, *, stdout: bool = False) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(visible(text), file=sys.stdout if stdout else sys.stderr)
        elif stdout:
            say(text)
        else:
            note(text)

    def __call__(self, event: Event) -> None:
        p = self.prefix
        match event:
            case Progress():
                self._progress(event)
            case Room():
                self._write(f"{p}On the other machine, run:\n\n    imprint sync {event.target} --pin {event.pin}\n",
                            stdout=True)
                self._write(f"{p}This device: {clip(event.hostname, 64)} (id: {event.fingerprint})", stdout=True)
                if event.mode == "plaintext":
                    self._write(f"{p}WARNING: --plaintext: the relay can read the PIN and every record of this sync")
                self._write(f"{p}Waiting for the other machine… (Ctrl-C to stop)")
            case Waiting(message=message):
                self._write(f"{p}{message}")
            case AutoAccepted():
                self._write(f"{p}Trusted device {clip(event.hostname, 64)} ({clip(event.fingerprint, 16)}) accepted")
            case ApprovalRequired() | ConfirmRequired() | ForgetConfirmRequired():
                pass  # the prompt itself shows the peer
            case PeerConnected():
                who = f"{clip(event.hostname, 64)} ({clip(event.fingerprint, 16)})" if event.hostname else "the other machine"
                verify = f"; verification code {event.verification}" if event.verification else ""
                self._write(f"{p}Connected to {who}, {event.mode}{verify}")
            case Reconciled(send=send, receive=receive, round_trips=trips):
                def what(c: dict[str, int]) -> str:
                    parts = [f"{c.get(k, 0):,} {k}" for k in ("memories", "facts", "forgotten") if c.get(k)]
                    return ", ".join(parts) or "nothing"
                self._write(f"{p}Compared in {trips} round trip{'s' if trips != 1 else ''}: to send {what(send)}; "
                            f"to receive {what(receive)}")
            case Notice(message=message):
                self._write(f"{p}{message}")
            case Stats():
                self.close()
                say(p + format_stats(event).replace("\n", "\n" + p))

    def _progress(self, event: Progress) -> None:
        way = "in" if event.direction in ("receive", "store") else "out"
        key = (way, event.dataset)
        if key not in self.notes:
            if not event.total:
                return  # nothing of this dataset moves this way
            self.notes[key] = {"done": "0"}
        notes = self.notes[key]
        if event.direction in ("store", "peer_store"):
            notes["done"] = f"{event.done:,}"
            notes["stored"] = "stored" if event.direction == "store" else "stored there"
        elif event.direction == "receive":
            notes["received"] = f"received {event.done:,}"
        elif event.confirmed:
            notes["received"] = f"received there {event.done:,}"
        else:
            notes["received"] = f"sent {event.done:,}"
        after = ", ".join(v for k, v in notes.items() if k != "done")
        desc = f"{self.prefix}{'receiving' if way == 'in' else 'sending'} {event.dataset}"
        if self.use_bars:
            self._bar(key, desc, event, after)
        else:
            stored = f"{notes['stored']} {notes['done']} of {event.total:,}" if "stored" in notes else ""
            self._line(key, desc, event, ", ".join(t for t in (notes.get("received", ""), stored) if t))

    def _bar(self, key: tuple[str, str], desc: str, event: Progress, after: str) -> None:
        from tqdm import tqdm

        bar = self.bars.get(key)
        if bar is None:
            bar = tqdm(total=event.total, desc=desc, unit="rec", file=sys.stderr, dynamic_ncols=True, leave=True)
            self.bars[key] = bar
        bar.total = event.total
        if event.direction in ("store", "peer_store"):
            bar.n = event.done
        bar.set_postfix_str(after, refresh=False)
        bar.refresh()

    def _line(self, key: tuple[str, str], desc: str, event: Progress, text: str) -> None:
        now = self.clock()
        last, said = self._printed.get(key, (float("-inf"), ""))
        complete = event.direction in ("store", "peer_store") and event.done >= event.total
        if said == text or (not complete and now - last < PLAIN_INTERVAL):
            return
        self._printed[key] = (now, text)
        note(f"{desc}: {text}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _outcome(inserted: int, skipped: int, rejected: int, ended: int, *, here: bool, updated: int = 0) -> str:
    parts = [f"{inserted:,} new", f"{skipped - updated:,} already {'here' if here else 'there'}"]
    if updated:
        parts.append(f"{updated:,} updated")
    if ended:
        parts.append(f"{ended:,} ended")
    if rejected:
        parts.append(f"{rejected:,} refused")
    return ", ".join(parts)


def _sent_text(dataset: str, figures: SentFigures) -> str:
    text = f"{dataset} {figures.sent:,}"
    if figures.inserted is not None:
        text += " (" + _outcome(figures.inserted, figures.skipped or 0, figures.rejected or 0, figures.ended or 0,
                                here=False, updated=figures.updated or 0) + ")"
    return text


def format_stats(event: Stats) -> str:
    """The summary: per dataset, what came in (new / already here / refused) and what went out."""
    r = event.received
    memories = _outcome(r.memories.inserted, r.memories.skipped, r.memories.rejected, 0, here=True,
                        updated=r.memories.updated)
    incoming = (f"memories {memories}; "
                f"facts {_outcome(r.facts.inserted, r.facts.skipped, r.facts.rejected, r.facts.ended, here=True)}")
    outgoing = f"{_sent_text('memories', event.sent.memories)}; {_sent_text('facts', event.sent.facts)}"
    lines = ["Sync complete.", f"  received: {incoming}", f"  sent:     {outgoing}"]
    if event.forgotten:
        lines.append(f"  forgotten here, as on the other machine: {event.forgotten:,} (kept in 'imprint trash' "
                     "for 30 days)")
    if event.forgets_kept:
        lines.append(f"  kept, though the other machine forgot them: {event.forgets_kept:,} (over --max-forget)")
    if event.forgets_refused:
        lines.append(f"  tombstones refused (not the other machine's to send, or dated ahead): "
                     f"{event.forgets_refused:,}")
    if event.vectors_reused:
        lines.append(f"  vectors taken from the other machine (same model; each checked here in the background): {event.vectors_reused:,}")
    return "\n".join(lines)


def reporter(out: Output) -> Reporter:
    """`--json`: each event as its JSON line; otherwise lines and bars for a person."""
    return out.event if out.json_mode else HumanReporter()


# ---------------------------------------------------------------- the prompt


def stdin_forget(count: int, total: int, peer: PeerInfo | None) -> bool:
    """Ask on the terminal whether to forget what the other machine has forgotten; no terminal: no."""
    try:
        if not sys.stdin.isatty():
            return False
    except (OSError, ValueError):
        return False
    who = f"{clip(peer.hostname, 64)} ({clip(peer.fingerprint, 16)})" if peer is not None else "the other machine"
    sys.stderr.write(
        f"\n{who} has forgotten {count:,} of the {total:,} records this machine holds.\n"
        "Forget them here too? They stay in 'imprint trash' for 30 days. [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline().strip().lower()
    except (OSError, ValueError):
        answer = ""
    return answer in ("y", "yes")


def stdin_approver(peer: PeerInfo, warning: str) -> str:
    """Ask on stderr, read one line from stdin (works when stdin is a pipe); the raw answer."""
    lines = []
    if warning:
        lines.append(f"WARNING: {clip(warning, 300)}")
    # What the peer says about itself is shown, never obeyed: no escape sequence can
    # clear the screen or overwrite the warning above.
    lines += [
        "A device wants to sync with this machine:",
        f"  hostname:    {clip(peer.hostname, 64)}",
        f"  user:        {clip(peer.user, 64)}",
        f"  os:          {clip(peer.os, 64)}",
        f"  fingerprint: {clip(peer.fingerprint, 16)}",
    ]
    if peer.verification:
        lines += [f"  verification code: {peer.verification}",
                  "Check that the other machine shows this same code (it printed it when it connected);",
                  "if it shows another one, answer n: someone is between you."]
    else:
        lines.append("  (plaintext: no verification code; anyone with the PIN on this relay could be asking)")
    lines.append("Allow? [y]es / [n]o / [t]rust (accept and remember): ")
    sys.stderr.write("\n".join(lines))
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    try:
        if not sys.stdin.isatty():  # a terminal echoed the Enter; a pipe did not
            sys.stderr.write("\n")
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return answer
