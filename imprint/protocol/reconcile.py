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
- ``fp``: my fingerprint of this range — compare with yours;
- ``list``: the 8-byte digests of every item I have in this range — answer
  with ``final``;
- ``final``: the answer to your list: ``items``, mine that your list lacks,
  and ``marks``, a bit for each digest you listed that I lack;
- ``fill``: the answer to that final: the items its bits named, so the
  lister's peer learns them too.

A side receiving ``fp`` compares with its own: equal → skip; its own range
small → list it; else split its items in the range into :data:`BRANCH`
parts and send their fingerprints. A list costs 8 bytes an item, not the
item (17-25 bytes), and only differences ever travel whole.
A fingerprint is the sum, modulo 2**128, of the first 16 bytes
of SHA-256 of each item, of which the top 8 bytes are sent (an item's digest
is the top 8 bytes of the same 16): any difference
changes it (but for a chance of 2**-64), and with
prefix sums over the sorted items any range's fingerprint costs two
bisections, so a round costs O(ranges · log n) and reconciling two sets of
n items differing in d costs about log_BRANCH(n / LIST_AT) round trips and
O(d · log n) bytes.

The first message of a sync is a *summary*: one fingerprint of everything,
from a total the stores keep (:mod:`imprint.summaries`), so an unchanged
re-sync costs two small messages and reads no item. Only when the answer is
not a plain skip does either side load its items and go on as above.

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
from imprint.messages.wire import (
    DIGEST_BYTES,
    MAX_LISTED,
    Range,
    RangeMode,
    ReconcileMessage,
)

SKIP, FP, LIST, FINAL, FILL = RangeMode.SKIP, RangeMode.FP, RangeMode.LIST, RangeMode.FINAL, RangeMode.FILL

#: Parts a mismatched range is split into. Measured (8k and 40k items, 1.5 % differing):
#: 8 parts cost ~420-470 bytes per difference in 3 round trips; 16 parts ~600-700; 4 parts
#: ~410 but 4-5 round trips.
BRANCH = 8
#: A range with at most this many items is listed instead of split.
LIST_AT = 16
#: Bytes of a range fingerprint sent: the top 64 bits of the 128-bit sum. Two different
#: ranges agree by chance with probability 2**-64 per comparison; each byte less is ~8 %
#: less reconciliation traffic.
FINGERPRINT_BYTES = 8
#: Rounds (messages each way) before a conversation is called runaway.
MAX_ROUNDS = 64
#: Items a peer may claim beyond twice the counts both sides announced (counts are rounded
#: up, and stores change while a sync runs).
CLAIM_SLACK = 250_000
#: Items a peer may claim whatever it announced: each costs ~72 bytes here, so the peer's
#: claims stay under ~300 MB however many rounds it answers with invented items.
MAX_CLAIMED = 4_000_000
_MOD = 1 << 128


def claim_bound(own: int, announced: int) -> int:
    """How many items a peer may claim in a whole reconciliation: what it could hold and we
    lack is at most its own count, so twice both counts plus :data:`CLAIM_SLACK`, capped."""
    return min(MAX_CLAIMED, 2 * (max(own, 0) + max(announced, 0)) + CLAIM_SLACK)


def item_hash(item: bytes) -> int:
    return int.from_bytes(hashlib.sha256(item).digest()[:16], "big")


class Reconciler:
    """One side of a reconciliation over `items` (any iterable of distinct byte strings).

    After the conversation, :attr:`have` holds the items only this side has
    and :attr:`need` the items only the peer has.
    """

    def __init__(self, items: Iterable[bytes], *, initiator: bool, max_claimed: int = MAX_CLAIMED) -> None:
        self.items = sorted(set(items))
        self.initiator = initiator
        #: Items the peer may claim over the whole conversation (:func:`claim_bound`).
        self.max_claimed = max_claimed
        prefix = [0]
        digests: list[bytes] = []
        for item in self.items:
            h = item_hash(item)
            digests.append((h >> (128 - 8 * DIGEST_BYTES)).to_bytes(DIGEST_BYTES, "big"))
            prefix.append((prefix[-1] + h) % _MOD)
        self._prefix = prefix
        self._digests = digests
        #: (lower, upper) of the ranges I listed in my last message: the peer's next one answers them.
        self._listed: set[tuple[bytes, bytes | None]] = set()
        #: (lower, upper) → the digests my last message's finals marked: the peer's next one fills them.
        self._marked: dict[tuple[bytes, bytes | None], set[bytes]] = {}
        self.have: list[bytes] = []
        self.need: list[bytes] = []
        self.rounds = 0
        self.done = False

    # ------------------------------------------------------------- queries

    def _index(self, bound: bytes | None) -> int:
        return len(self.items) if bound is None else bisect_left(self.items, bound)

    def _fingerprint(self, lo: int, hi: int) -> bytes:
        return ((self._prefix[hi] - self._prefix[lo]) % _MOD).to_bytes(16, "big")[:FINGERPRINT_BYTES]

    def _describe(self, lo: int, hi: int, upper: bytes | None) -> list[Range]:
        """Ranges that tell the peer about my items [lo, hi) ending at `upper`:
        a list if few, else BRANCH fingerprinted parts."""
        n = hi - lo
        if n <= LIST_AT:
            return [Range(LIST, upper, digests=b"".join(self._digests[lo:hi]))]
        out: list[Range] = []
        parts = min(BRANCH, n)  # every part holds an item, so bounds strictly increase
        step = n / parts
        start = lo
        for part in range(1, parts + 1):
            end = hi if part == parts else lo + int(step * part)
            bound = upper if part == parts else _between(self.items[end - 1], self.items[end])
            out.append(Range(FP, bound, fingerprint=self._fingerprint(start, end)))
            start = end
        return out

    # ------------------------------------------------------------- the conversation

    @classmethod
    def agreed(cls, *, initiator: bool) -> Reconciler:
        """A finished conversation that found nothing different (the summaries matched)."""
        r = cls((), initiator=initiator)
        r.done = True
        return r

    def resume(self) -> None:
        """The initiator sent :func:`summary_message` instead of :meth:`initiate`:
        carry on from the peer's answer to it."""
        if not self.initiator:
            raise ProtocolError("only the initiator sends the summary")
        self.rounds = 1

    def initiate(self) -> ReconcileMessage:
        """The initiator's first message."""
        if not self.initiator:
            raise ProtocolError("only the initiator starts a reconciliation")
        self.rounds = 1
        return self._sending(self._describe(0, len(self.items), None), {})

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
        marked: dict[tuple[bytes, bytes | None], set[bytes]] = {}
        lower = b""
        lo = 0
        for r in ranges:
            hi = self._index(r.upper)
            bounds = (lower, r.upper)
            listed += len(r.items) + len(r.digests) // DIGEST_BYTES
            if listed > MAX_LISTED:
                raise ProtocolError("a reconciliation message lists too many items")
            if r.items:  # what the peer claims to hold, before anything is built from it
                self._claim(len(need) + len(r.items))
            if r.mode != FP and r.fingerprint or r.mode != LIST and r.digests or r.mode != FINAL and r.marks:
                raise ProtocolError("a reconciliation range carries fields its mode has not")
            if r.mode not in (FINAL, FILL) and r.items:
                raise ProtocolError("only a final or a fill range carries items")
            if any(i < lower or (r.upper is not None and i >= r.upper) for i in r.items) or \
                    len(set(r.items)) != len(r.items):
                raise ProtocolError("items repeat or fall outside their range")
            if r.mode == SKIP:
                out.append(Range(SKIP, r.upper))
            elif r.mode == FP:
                if len(r.fingerprint) != FINGERPRINT_BYTES:
                    raise ProtocolError(f"a fingerprint range must carry a {FINGERPRINT_BYTES}-byte fingerprint")
                if r.fingerprint == self._fingerprint(lo, hi):
                    out.append(Range(SKIP, r.upper))
                else:
                    out.extend(self._describe(lo, hi, r.upper))
            elif r.mode == LIST:  # the peer's digests: answer with the difference
                if len(r.digests) % DIGEST_BYTES:
                    raise ProtocolError("a list range carries whole digests")
                theirs = [r.digests[n:n + DIGEST_BYTES] for n in range(0, len(r.digests), DIGEST_BYTES)]
                if len(set(theirs)) != len(theirs):
                    raise ProtocolError("a list range repeats a digest")
                mine = set(self._digests[lo:hi])
                their_set = set(theirs)
                mine_only = tuple(self.items[n] for n in range(lo, hi) if self._digests[n] not in their_set)
                lacking = [d not in mine for d in theirs]
                have.extend(mine_only)
                if any(lacking):
                    marked[bounds] = {d for d, lack in zip(theirs, lacking) if lack}
                out.append(Range(FINAL, r.upper, items=mine_only, marks=_bits(lacking)))
            elif r.mode == FINAL:  # the answer to my list: theirs I lack; mine they lack, by bit
                if bounds not in self._listed:
                    raise ProtocolError("a final range answers no list of mine")
                if r.marks and len(r.marks) != (hi - lo + 7) // 8 or _unbits(r.marks, hi - lo) is None:
                    raise ProtocolError("a final range's marks do not match the list it answers")
                if set(r.items) & set(self.items[lo:hi]):
                    raise ProtocolError("a final range sends items I listed")
                lacked = tuple(self.items[lo + n] for n in _unbits(r.marks, hi - lo) or ())
                need.extend(r.items)
                have.extend(lacked)
                out.append(Range(FILL, r.upper, items=lacked) if lacked else Range(SKIP, r.upper))
            elif r.mode == FILL:  # the items my final's marks asked for
                expected = self._marked.get(bounds)
                if expected is None or {self._digest(i) for i in r.items} != expected or len(r.items) != len(expected):
                    raise ProtocolError("a fill range does not answer the final it was given")
                need.extend(r.items)
                out.append(Range(SKIP, r.upper))
            else:
                raise ProtocolError(f"unknown reconciliation range mode {r.mode}")
            lower = r.upper if r.upper is not None else lower
            lo = hi
        self.have.extend(have)
        self.need.extend(need)
        answer = _merge_skips(out)
        if self.initiator and all(r.mode == SKIP for r in answer):
            self.done = True
            self._listed, self._marked = set(), {}
            return None
        return self._sending(answer, marked)

    def _claim(self, more: int) -> None:
        if len(self.need) + more > self.max_claimed:
            raise ProtocolError(f"the other machine claims more items than it said it holds (over "
                                f"{self.max_claimed:,}); nothing learnt from it is kept")

    def _sending(self, ranges: list[Range], marked: dict[tuple[bytes, bytes | None], set[bytes]]) -> ReconcileMessage:
        """The message to send; remembers what the peer's next message must answer."""
        self._marked = marked
        self._listed = set()
        lower = b""
        for r in ranges:
            if r.mode == LIST:
                self._listed.add((lower, r.upper))
            lower = r.upper if r.upper is not None else lower
        return ReconcileMessage(tuple(ranges))

    @staticmethod
    def _digest(item: bytes) -> bytes:
        return (item_hash(item) >> (128 - 8 * DIGEST_BYTES)).to_bytes(DIGEST_BYTES, "big")

    def finish(self) -> None:
        """The responder: the initiator moved on; whatever it learnt is complete."""
        self.done = True


def _top(total: int) -> bytes:
    return (total % _MOD).to_bytes(16, "big")[:FINGERPRINT_BYTES]


def summary_message(total: int) -> ReconcileMessage:
    """The initiator's first message: the fingerprint of all its items, from their
    `total` (the sum of their :func:`item_hash`, as :mod:`imprint.summaries` keeps it)."""
    return ReconcileMessage((Range(FP, None, fingerprint=_top(total)),))


def is_summary(message: ReconcileMessage) -> bool:
    """Whether `message` is one fingerprint of everything (what :func:`summary_message` makes)."""
    return len(message.ranges) == 1 and message.ranges[0].mode == FP and message.ranges[0].upper is None


def agrees(message: ReconcileMessage, total: int) -> bool:
    """Whether a summary message fingerprints exactly what our `total` does."""
    return is_summary(message) and message.ranges[0].fingerprint == _top(total)


#: The answer to a summary that agrees: nothing differs anywhere.
AGREED = ReconcileMessage((Range(SKIP, None),))


def _bits(flags: list[bool]) -> bytes:
    """Flags as bits, lowest first (b"" when none is set: the peer reads that as all clear)."""
    if not any(flags):
        return b""
    out = bytearray((len(flags) + 7) // 8)
    for n, flag in enumerate(flags):
        if flag:
            out[n // 8] |= 1 << (n % 8)
    return bytes(out)


def _unbits(marks: bytes, n: int) -> list[int] | None:
    """The positions set in `marks` among `n` flags; None if a bit past `n` is set."""
    if not marks:
        return []
    positions = [i for i in range(len(marks) * 8) if marks[i // 8] >> (i % 8) & 1]
    return positions if all(p < n for p in positions) else None


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
        if r.mode == SKIP and out and out[-1].mode == SKIP:
            out[-1] = r
        else:
            out.append(r)
    return out


# ---------------------------------------------------------------- the wire form
#
# Inside the sealed channel a reconciliation message is packed by hand, not as
# MessagePack: most of it is thousands of small ranges, and a generic encoding
# spends ~9 of a fingerprint range's ~22 bytes on headers and on bounds that
# repeat their neighbour's first bytes. Packed (measured, 40k items, 600
# differences): ~40 % fewer bytes.
#
#   message := count:varint range{count}
#   range   := mode:u8 shared:u8 length:u8 suffix[length]   (length 255: open, the end)
#              FP:    size:u8 fingerprint[size]
#              LIST:  n:varint digest[8]{n}
#              FINAL: n:varint (size:u8 item[size]){n} m:varint marks[m]
#              FILL:  n:varint (size:u8 item[size]){n}
#
# A bound is the previous range's bound's first `shared` bytes plus `suffix`.

_OPEN = 255


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def pack(message: ReconcileMessage) -> bytes:
    """The wire form of `message` (see above)."""
    out = bytearray()
    _varint(len(message.ranges), out)
    prev = b""
    for r in message.ranges:
        out.append(r.mode)
        if r.upper is None:
            out += bytes((0, _OPEN))
        else:
            shared = 0
            limit = min(len(prev), len(r.upper), 254)
            while shared < limit and prev[shared] == r.upper[shared]:
                shared += 1
            suffix = r.upper[shared:]
            out += bytes((shared, len(suffix)))
            out += suffix
            prev = r.upper
        if r.mode == FP:
            out.append(len(r.fingerprint))
            out += r.fingerprint
        elif r.mode == LIST:
            _varint(len(r.digests) // DIGEST_BYTES, out)
            out += r.digests
        elif r.mode in (FINAL, FILL):
            _varint(len(r.items), out)
            for item in r.items:
                out.append(len(item))
                out += item
            if r.mode == FINAL:
                _varint(len(r.marks), out)
                out += r.marks
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ProtocolError("a reconcile frame ends too early")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 28:
                raise ProtocolError("a reconcile frame holds an oversized number")
        if n > limit:
            raise ProtocolError("a reconcile frame holds too many ranges or items")
        return n


def unpack(data: bytes) -> ReconcileMessage:
    """A message from its wire form, every count and size checked (the peer is hostile).

    Raises:
        ProtocolError: malformed, truncated, trailing bytes, or beyond the limits.
    """
    from imprint.messages.wire import MAX_ITEM_BYTES, MAX_RANGES

    r = _Reader(bytes(data))
    ranges: list[Range] = []
    listed = 0
    prev = b""
    for _ in range(r.varint(MAX_RANGES)):
        try:
            mode = RangeMode(r.byte())
        except ValueError:
            raise ProtocolError("a reconcile frame holds an unknown range mode") from None
        shared, length = r.byte(), r.byte()
        if length == _OPEN:
            upper = None
        else:
            if shared > len(prev) or shared + length > MAX_ITEM_BYTES:
                raise ProtocolError("a reconcile frame holds a bad bound")
            upper = prev[:shared] + r.take(length)
            prev = upper
        fields: dict = {}
        if mode == FP:
            size = r.byte()
            if size > 16:
                raise ProtocolError("a reconcile frame holds an oversized fingerprint")
            fields["fingerprint"] = r.take(size)
        elif mode == LIST:
            n = r.varint(MAX_LISTED)
            listed += n
            fields["digests"] = r.take(n * DIGEST_BYTES)
        elif mode in (FINAL, FILL):
            n = r.varint(MAX_LISTED)
            listed += n
            if listed > MAX_LISTED:
                raise ProtocolError("a reconciliation message lists too many items")
            items = []
            for _ in range(n):
                size = r.byte()
                if size > MAX_ITEM_BYTES:
                    raise ProtocolError("a reconcile frame holds an oversized item")
                items.append(r.take(size))
            fields["items"] = tuple(items)
            if mode == FINAL:
                fields["marks"] = r.take(r.varint(MAX_LISTED // 8))
        if listed > MAX_LISTED:
            raise ProtocolError("a reconciliation message lists too many items")
        ranges.append(Range(mode, upper, **fields))
    if r.at != len(r.data):
        raise ProtocolError("a reconcile frame has bytes after its last range")
    return ReconcileMessage(tuple(ranges))
