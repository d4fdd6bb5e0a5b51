"""What a peer may make this machine forget, and when to ask first.

A peer's tombstones (`Forgets` frames, protocol 2) are taken only when
reconciling showed them: each must be exactly an item the peer holds and we
lack (:attr:`~imprint.protocol.reconcile.Reconciler.need`), dated no later
than our clock allows (:func:`~imprint.messages.records.dated_ahead`). Anything
else — a tombstone for an id the peer computed from a known text, one sent
twice, one dated year 3000 — is refused and counted. Knowing a memory's id
is therefore not enough to make us forget it: the peer must hold a
tombstone for it, which reconciling proved.

Even entitled tombstones can be a wipe (a peer whose own store was wiped, by
mistake or not). A sync that would forget more than the limit stops before
forgetting any and asks, as rsync's ``--max-delete`` and Unison's
``confirmbigdeletes`` do; :class:`ForgetLimit` is that limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from imprint.messages.records import Tombstone, dated_ahead
from imprint.protocol.items import FACT, FORGOTTEN_FACT, FORGOTTEN_MEMORY, MEMORY, item

#: The default limit: ask when a sync would forget more than 100 records *and* more than 10 % of the store.
DEFAULT_MAX_FORGET = "100,10%"
_KIND = {"memories": FORGOTTEN_MEMORY, "facts": FORGOTTEN_FACT}


@dataclass(frozen=True)
class ForgetLimit:
    """Forgetting more than `count` records and more than `share` of the store needs a yes.
    None for either means that bound does not apply; both None: never ask (`--yes`)."""

    count: int | None = 100
    share: float | None = 0.10

    @classmethod
    def parse(cls, text: str) -> ForgetLimit:
        """`100`, `10%`, `100,10%` (both must be passed), `none` (never ask).

        Raises:
            ValueError: anything else (the message says what is accepted).
        """
        text = text.strip().lower()
        if text in ("none", "all", "off"):
            return cls(None, None)
        count: int | None = None
        share: float | None = None
        for part in filter(None, (p.strip() for p in text.split(","))):
            if re.fullmatch(r"\d+(\.\d+)?%", part):
                share = float(part[:-1]) / 100
                if share > 1:
                    raise ValueError(f"--max-forget {part}: a share is at most 100%")
            elif re.fullmatch(r"\d+", part):
                count = int(part)
            else:
                raise ValueError(f"--max-forget {text!r}: give a number of records (100), a share of the store "
                                 "(10%), both (100,10%) or none")
        if count is None and share is None:
            raise ValueError("--max-forget needs a number, a share or both")
        return cls(count, share)

    @property
    def asks(self) -> bool:
        return self.count is not None or self.share is not None

    def exceeded(self, forgetting: int, total: int) -> bool:
        """Whether forgetting `forgetting` of `total` records needs the user's yes."""
        if not self.asks or forgetting == 0:
            return False
        over_count = self.count is None or forgetting > self.count
        over_share = self.share is None or forgetting > self.share * max(total, 0)
        return over_count and over_share

    def describe(self) -> str:
        parts = ([f"{self.count:,} records"] if self.count is not None else []) + \
                ([f"{self.share:.0%} of the store"] if self.share is not None else [])
        return " and ".join(parts) or "no limit"


class Entitlement:
    """The tombstones a peer may send after reconciling: those among `need`.

    :meth:`take` keeps the entitled ones (each at most once) and counts the rest.
    """

    def __init__(self, need: Iterable[bytes]) -> None:
        self._open = {raw for raw in need if raw[:1] in (FORGOTTEN_MEMORY, FORGOTTEN_FACT)}
        self.refused = 0
        self.reasons: list[str] = []

    def take(self, tombstones: Iterable[Tombstone], now: float | None = None) -> list[Tombstone]:
        kept: list[Tombstone] = []
        for t in tombstones:
            raw = item(_KIND[t.dataset], t.key, t.deleted_at)
            ahead = dated_ahead(t, now)
            if raw in self._open and not ahead:
                self._open.discard(raw)
                kept.append(t)
                continue
            self.refused += 1
            if len(self.reasons) < 3:
                self.reasons.append(ahead or f"{t.dataset} {t.key}: not a tombstone the reconciliation showed")
        return kept


def would_forget(items: Iterable[bytes], tombstones: Iterable[Tombstone]) -> tuple[int, int]:
    """(records `tombstones` would remove, records held) over this side's reconciliation `items`.

    A memory goes when its version is not newer than its tombstone; a fact item does
    not say when an open fact started, so a tombstone of an open fact counts as removing it.
    """
    held: dict[tuple[bytes, str], float] = {}
    total = 0
    for raw in items:
        kind = raw[:1]
        if kind == MEMORY or kind == FACT:
            total += 1
            held[(kind, raw[1:9].hex())] = _version(raw)
    removed = 0
    for t in tombstones:
        kind = MEMORY if t.dataset == "memories" else FACT
        version = held.pop((kind, t.key), None)
        if version is not None and version <= t.deleted_at:
            removed += 1
    return removed, total


def _version(raw: bytes) -> float:
    import struct

    return struct.unpack(">d", raw[9:17])[0]
