"""Range-based set reconciliation, as a machine without I/O.

Two sides each hold a set of *items* — opaque byte strings, here
``dataset byte + key + version`` (see :mod:`imprint.items`) — and want the
symmetric difference: which items only I have (I send those records) and
which only the peer has (it sends them). Sending every item would cost as
much as the store; this costs about the difference.

The items are sorted. A message is a sequence of consecutive ranges covering
everything: the first starts at the empty string, each ends where the next
starts, the last is open. Each range says one of:

- ``skip``: nothing to do here (the fingerprints matched);
- ``fp``: my count and fingerprint of this range — compare with yours;
- ``list``: every item I have in this range — answer with ``final``;
- ``final``: the answer to your list: ``items``, mine that your list lacks,
  and ``missing``, yours that I lack — just the difference.

A side receiving ``fp`` compares with its own: equal → skip; its own range
small → list it; else split its items in the range into :data:`BRANCH`
parts and send their fingerprints. Receiving a ``list``, it learns the
difference in that range (what it has and the peer lacks, and the reverse)
and answers with exactly that difference (``final``), so the peer learns it too.
A fingerprint is the count and the sum, modulo 2**128, of the first 16 bytes
of SHA-256 of each item: any difference changes it (up to 2**-128), and with
prefix sums over the sorted items any range's fingerprint costs two
bisections, so a round costs O(ranges · log n) and reconciling two sets of
n items differing in d costs about log_BRANCH(n) round trips and O(d · log n)
bytes (a million items and one difference: 4 round trips, ~2 KB).

The initiator (the joining side) speaks first and decides when it is over:
it sends a message while any range in it asks for an answer or carries a
``final``; an answer with nothing to act on ends it. Every message from the
peer is hostile until checked (:meth:`Reconciler.receive` raises
ProtocolError): bounds must increase, counts and sizes stay within limits,
and a conversation has at most :data:`MAX_ROUNDS` rounds.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Iterable

from imprint.errors import ProtocolError
from imprint.messages.wire import MAX_LISTED, Range, ReconcileMessage

#: Parts a mismatched range is split into.
BRANCH = 16
#: A range with at most this many items is listed instead of split.
LIST_AT = 16
#: Rounds (messages each way) before a conversation is called runaway.
MAX_ROUNDS = 64
_MOD = 1 << 128


def item_hash(item: bytes) -> int:
    return int.from_bytes(hashlib.sha256(item).digest()[:16], "big")


class Reconciler:
    """One side of a reconciliation over `items` (any iterable of distinct byte strings).

    After the conversation, :attr:`have` holds the items only this side has
    and :attr:`need` the items only the peer has.
    """

    def __init__(self, items: Iterable[bytes], *, initiator: bool) -> None:
        self.items = sorted(set(items))
        self.initiator = initiator
        prefix = [0]
        for item in self.items:
            prefix.append((prefix[-1] + item_hash(item)) % _MOD)
        self._prefix = prefix
        self.have: list[bytes] = []
        self.need: list[bytes] = []
        self.rounds = 0
        self.done = False

    # ------------------------------------------------------------- queries

    def _index(self, bound: bytes | None) -> int:
        return len(self.items) if bound is None else bisect_left(self.items, bound)

    def _fingerprint(self, lo: int, hi: int) -> bytes:
        return ((self._prefix[hi] - self._prefix[lo]) % _MOD).to_bytes(16, "big")

    def _describe(self, lo: int, hi: int, upper: bytes | None) -> list[Range]:
        """Ranges that tell the peer about my items [lo, hi) ending at `upper`:
        a list if few, else BRANCH fingerprinted parts."""
        n = hi - lo
        if n <= LIST_AT:
            return [Range("list", upper, items=tuple(self.items[lo:hi]))]
        out: list[Range] = []
        step = n / BRANCH
        start = lo
        for part in range(1, BRANCH + 1):
            end = hi if part == BRANCH else lo + int(step * part)
            bound = upper if part == BRANCH else _between(self.items[end - 1], self.items[end])
            out.append(Range("fp", bound, count=end - start, fingerprint=self._fingerprint(start, end)))
            start = end
        return out

    # ------------------------------------------------------------- the conversation

    def initiate(self) -> ReconcileMessage:
        """The initiator's first message."""
        if not self.initiator:
            raise ProtocolError("only the initiator starts a reconciliation")
        self.rounds = 1
        return ReconcileMessage(tuple(self._describe(0, len(self.items), None)))

    def receive(self, message: ReconcileMessage) -> ReconcileMessage | None:
        """Take the peer's message; the answer to send, or None when this side is done
        (the initiator ends the conversation by sending nothing; the responder always answers).

        Raises:
            ProtocolError: a malformed or runaway message (nothing learnt from it is kept).
        """
        if self.done:
            raise ProtocolError("a reconciliation message after the reconciliation ended")
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            raise ProtocolError(f"reconciliation did not end within {MAX_ROUNDS} rounds")
        ranges = message.ranges
        if not ranges or ranges[-1].upper is not None:
            raise ProtocolError("a reconciliation message must cover every item (its last range is open)")
        listed = 0
        lower = b""
        for r in ranges[:-1]:
            if r.upper is None or r.upper <= lower:
                raise ProtocolError("reconciliation ranges are not in increasing order")
            lower = r.upper
        have: list[bytes] = []
        need: list[bytes] = []
        out: list[Range] = []
        lower = b""
        lo = 0
        for r in ranges:
            hi = self._index(r.upper)
            listed += len(r.items)
            if listed > MAX_LISTED:
                raise ProtocolError("a reconciliation message lists too many items")
            if r.mode == "skip":
                out.append(Range("skip", r.upper))
            elif r.mode == "fp":
                if r.items or len(r.fingerprint) != 16:
                    raise ProtocolError("a fingerprint range must carry a 16-byte fingerprint and no items")
                if r.count == hi - lo and r.fingerprint == self._fingerprint(lo, hi):
                    out.append(Range("skip", r.upper))
                else:
                    out.extend(self._describe(lo, hi, r.upper))
            else:
                listed += len(r.missing)
                if listed > MAX_LISTED:
                    raise ProtocolError("a reconciliation message lists too many items")
                theirs = set(r.items)
                if len(theirs) != len(r.items) or any(
                        i < lower or (r.upper is not None and i >= r.upper) for i in (*r.items, *r.missing)):
                    raise ProtocolError("listed items repeat or fall outside their range")
                mine = self.items[lo:hi]
                mine_set = set(mine)
                if r.mode == "list":  # the peer's whole range: answer with the difference
                    if r.missing:
                        raise ProtocolError("a list range carries no missing items")
                    mine_only = tuple(i for i in mine if i not in theirs)
                    theirs_only = tuple(i for i in r.items if i not in mine_set)
                    have.extend(mine_only)
                    need.extend(theirs_only)
                    out.append(Range("final", r.upper, items=mine_only, missing=theirs_only))
                else:  # final: what the peer has that I listed not, and what of mine it lacks
                    if (mine_set & theirs) or not mine_set.issuperset(r.missing):
                        raise ProtocolError("a final range does not answer the list it was given")
                    need.extend(r.items)
                    have.extend(r.missing)
                    out.append(Range("skip", r.upper))
            lower = r.upper if r.upper is not None else lower
            lo = hi
        self.have.extend(have)
        self.need.extend(need)
        answer = ReconcileMessage(tuple(_merge_skips(out)))
        if self.initiator and all(r.mode == "skip" for r in answer.ranges):
            self.done = True
            return None
        return answer

    def finish(self) -> None:
        """The responder: the initiator moved on; whatever it learnt is complete."""
        self.done = True


def _between(prev: bytes, cur: bytes) -> bytes:
    """The shortest prefix of `cur` above `prev` (a bound is a few bytes, not a whole item)."""
    n = 0
    limit = min(len(prev), len(cur))
    while n < limit and prev[n] == cur[n]:
        n += 1
    return cur[: n + 1]


def _merge_skips(ranges: list[Range]) -> list[Range]:
    """Adjacent skips become one (the bounds of the later one)."""
    out: list[Range] = []
    for r in ranges:
        if r.mode == "skip" and out and out[-1].mode == "skip":
            out[-1] = r
        else:
            out.append(r)
    return out
