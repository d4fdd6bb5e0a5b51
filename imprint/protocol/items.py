"""Items: what reconciliation compares, one per record and per tombstone.

An item is ``kind byte + key (8 bytes) + version (8 bytes)``, and for a
memory the 8 bytes of its content hash after:

=====  ===================  =========================================
kind   key                  version
=====  ===================  =========================================
``m``  memory id            its timestamp, then its content hash
``f``  fact key             its end time (0 while open)
``t``  forgotten memory id  when it was forgotten
``u``  forgotten fact key   when it was forgotten
=====  ===================  =========================================

(keys are the 16 hex digits of :func:`~imprint.messages.records.fact_key`
and memory ids; versions are big-endian IEEE doubles, which sort as the
numbers do for the non-negative times records carry). Two copies of a record
that differ in version are two items, so both travel and the merge rules
(:func:`~imprint.messages.records.replaces` between two memory copies: the
earliest of one text, the newest edit; an end over an open fact; a tombstone
over what it covers) decide on each side.

After reconciling, :func:`select` turns the items only we hold into what to
send: memory ids and fact keys for the stream, and the tombstones themselves
(an item carries all a tombstone is).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from imprint.messages.records import Tombstone, replaces

MEMORY, FACT, FORGOTTEN_MEMORY, FORGOTTEN_FACT = b"m", b"f", b"t", b"u"
_VERSION = struct.Struct(">d")


def item(kind: bytes, key: str, version: float, text: str = "") -> bytes:
    return kind + bytes.fromhex(key) + _VERSION.pack(version) + bytes.fromhex(text)


def items_of(memories: tuple[tuple[str, float, str], ...], facts: tuple[tuple[str, float], ...],
             forgotten_memories: tuple[tuple[str, float], ...] = (),
             forgotten_facts: tuple[tuple[str, float], ...] = ()) -> list[bytes]:
    """Every item of a side, from its stores' :class:`~imprint.messages.store.Versions`."""
    out = [item(MEMORY, k, v, h) for k, v, h in memories]
    out += [item(FACT, k, v) for k, v in facts]
    out += [item(FORGOTTEN_MEMORY, k, v) for k, v in forgotten_memories]
    out += [item(FORGOTTEN_FACT, k, v) for k, v in forgotten_facts]
    return out


@dataclass
class Selection:
    """What to send the peer: its missing memories and facts by key, and tombstones."""

    memories: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.memories or self.facts or self.tombstones)


def select(have: list[bytes], need: list[bytes] = ()) -> Selection:
    """Our items the peer lacks, as what to send (items are ours: no checks needed).

    A copy that loses to what the peer holds is not sent either (the merge rules
    decide the same on both sides): a record the peer has forgotten (its tombstone,
    among what we `need`, covers our copy: it removes ours when it arrives), a copy
    of a memory that loses to the peer's (:func:`~imprint.messages.records.replaces`),
    an open fact the peer holds ended.
    """
    coming: dict[tuple[bytes, bytes], float] = {}
    memories: dict[bytes, tuple[float, str]] = {}
    for raw in need:
        kind = raw[:1]
        if kind == MEMORY and len(raw) == 25:
            copy = (_VERSION.unpack(raw[9:17])[0], raw[17:25].hex())
            prior = memories.get(raw[1:9])
            if prior is None or replaces(copy, prior):  # several copies: the one that wins
                memories[raw[1:9]] = copy
        elif len(raw) == 17 and kind in (FORGOTTEN_MEMORY, FORGOTTEN_FACT, FACT):
            version = _VERSION.unpack(raw[9:17])[0]
            prior = coming.get((kind, raw[1:9]))
            if prior is None or version > prior:  # several: the latest tombstone, the latest end
                coming[(kind, raw[1:9])] = version
    out = Selection()
    for raw in have:
        kind, key, (version,) = raw[:1], raw[1:9].hex(), _VERSION.unpack(raw[9:17])
        if kind == MEMORY:
            if version <= coming.get((FORGOTTEN_MEMORY, raw[1:9]), -1.0):
                continue
            theirs = memories.get(raw[1:9])
            if theirs is not None and replaces(theirs, (version, raw[17:25].hex())):
                continue  # the peer's copy wins there and here
            out.memories.append(key)
        elif kind == FACT:
            if 0 < version <= coming.get((FORGOTTEN_FACT, raw[1:9]), -1.0):
                continue  # (an open fact's item does not say when it started: it is sent)
            if version == 0 and coming.get((FACT, raw[1:9]), 0.0) > 0:
                continue  # the peer's ended copy ends ours; ours would change nothing there
            out.facts.append(key)
        elif kind == FORGOTTEN_MEMORY:
            out.tombstones.append(Tombstone("memories", key, version))
        elif kind == FORGOTTEN_FACT:
            out.tombstones.append(Tombstone("facts", key, version))
    return out


def counts(items: list[bytes]) -> dict[str, int]:
    """How many of each kind, for telling the user."""
    names = {MEMORY: "memories", FACT: "facts", FORGOTTEN_MEMORY: "forgotten", FORGOTTEN_FACT: "forgotten"}
    out = {"memories": 0, "facts": 0, "forgotten": 0}
    for raw in items:
        name = names.get(raw[:1])
        if name:
            out[name] += 1
    return out
