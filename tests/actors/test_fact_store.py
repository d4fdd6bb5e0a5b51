"""FactStore alone, through `ask`, on a real SQLite file under tmp_path."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pykka
import pytest

from imprint.actors.fact_store import FactStore
from imprint.errors import InputError, StoreError
from imprint.messages.records import FactRecord
from imprint.messages.store import (
    AddFact,
    CountFacts,
    EndFact,
    FactCounts,
    ListFacts,
    PageFacts,
    Ping,
    StoredFact,
    StoreFacts,
    StoreResult,
)

pytestmark = pytest.mark.timeout(60)

StartActor = Callable[..., pykka.ActorRef[Any]]


@pytest.fixture
def facts_path(tmp_path: Path) -> Path:
    return tmp_path / "workspaces" / "default" / "facts.db"


@pytest.fixture
def fact_store(start_actor: StartActor, facts_path: Path) -> pykka.ActorRef[Any]:
    ref = start_actor(FactStore, path=facts_path)
    assert ref.ask(Ping(), timeout=30) is True
    return ref


def fact(s: str, p: str, o: str, valid_from: float = 100.0, *, ended: float | None = None, source: str = "") -> FactRecord:
    return FactRecord(subject=s, predicate=p, object=o, valid_from=valid_from, ended=ended, source=source)


def store(ref: pykka.ActorRef[Any], *records: FactRecord) -> StoreResult:
    return ref.ask(StoreFacts(records=records), timeout=30)


def listed(ref: pykka.ActorRef[Any], **kw: Any) -> list[FactRecord]:
    return [f.record for f in ref.ask(ListFacts(**kw), timeout=30)]


def test_store_dedups_on_spec_identity(fact_store: pykka.ActorRef[Any]) -> None:
    a = fact("alice", "likes", "tea", 100.0)
    b = fact("alice", "likes", "tea", 200.0)  # same triple, other valid_from: another fact
    assert store(fact_store, a, b) == StoreResult(inserted=2, skipped=0)
    # same identity with another source is still the same fact
    assert store(fact_store, a, fact("alice", "likes", "tea", 100.0, source="elsewhere")) == StoreResult(inserted=0, skipped=2)
    assert store(fact_store, a, a, fact("bob", "likes", "tea")) == StoreResult(inserted=1, skipped=2)
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=3, ended=0)
    assert [r.source for r in listed(fact_store, subject="alice")] == ["", ""]


def test_incoming_end_time_ends_our_open_copy(fact_store: pykka.ActorRef[Any]) -> None:
    open_copy = fact("alice", "lives_in", "Paris", 100.0)
    other = fact("alice", "likes", "tea", 100.0)
    store(fact_store, open_copy, other)

    result = store(fact_store, fact("alice", "lives_in", "Paris", 100.0, ended=150.0), other)
    assert result == StoreResult(inserted=0, skipped=2, ended=1)
    [stored] = listed(fact_store, predicate="lives_in", include_ended=True)
    assert stored.ended == 150.0
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=1, ended=1)

    # an already ended copy keeps its own end time, is not counted again, and is named as different
    identity = ("alice", "lives_in", "Paris", 100.0)
    assert store(fact_store, fact("alice", "lives_in", "Paris", 100.0, ended=999.0)) == StoreResult(
        inserted=0, skipped=1, ended=0, kept_facts=(identity,))
    assert listed(fact_store, predicate="lives_in", include_ended=True)[0].ended == 150.0
    # an open copy offered for our ended one: ours stays ended, and differs
    assert store(fact_store, fact("alice", "lives_in", "Paris", 100.0)).kept_facts == (identity,)
    # the same end time: nothing differs
    assert store(fact_store, fact("alice", "lives_in", "Paris", 100.0, ended=150.0)).kept_facts == ()


def test_an_incoming_ended_fact_we_lack_is_inserted_ended(fact_store: pykka.ActorRef[Any]) -> None:
    assert store(fact_store, fact("x", "was", "y", ended=120.0)) == StoreResult(inserted=1, skipped=0, ended=0)
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=0, ended=1)


def test_paging_follows_identity_order_and_covers_all_once(fact_store: pykka.ActorRef[Any]) -> None:
    records = [fact(s, p, o, t) for s in ("carol", "alice", "bob") for p in ("knows", "has") for o, t in (("z", 5.0), ("a", 9.0))]
    records.append(fact("alice", "has", "a", 1.0))
    store(fact_store, *records)

    for limit in (1, 4, 13, 100):
        seen, after, pages = [], None, 0
        while True:
            page = fact_store.ask(PageFacts(limit=limit, after=after), timeout=10)
            pages += 1
            assert len(page.facts) <= limit
            seen += [f.record for f in page.facts]
            if page.next_after is None:
                break
            assert page.next_after == page.facts[-1].record.identity
            after = page.next_after
        assert seen == sorted(records, key=lambda r: r.identity), f"limit {limit}"
        assert pages >= -(-len(records) // limit)


def test_list_filters_and_open_only_by_default(fact_store: pykka.ActorRef[Any]) -> None:
    store(
        fact_store,
        fact("alice", "likes", "tea", 300.0),
        fact("alice", "likes", "coffee", 100.0, ended=200.0),
        fact("alice", "works_at", "Acme", 200.0),
        fact("bob", "likes", "tea", 50.0),
    )
    assert [r.object for r in listed(fact_store)] == ["tea", "Acme", "tea"]  # open ones, by valid_from
    assert [r.object for r in listed(fact_store, include_ended=True)] == ["tea", "coffee", "Acme", "tea"]
    assert [r.object for r in listed(fact_store, subject="alice")] == ["Acme", "tea"]
    assert [r.object for r in listed(fact_store, subject="alice", predicate="likes", include_ended=True)] == ["coffee", "tea"]
    assert [r.subject for r in listed(fact_store, predicate="likes")] == ["bob", "alice"]
    assert listed(fact_store, subject="nobody") == []
    assert len(listed(fact_store, include_ended=True, limit=2)) == 2


def test_add_returns_the_stored_fact_and_the_existing_one_on_repeat(fact_store: pykka.ActorRef[Any]) -> None:
    first = fact_store.ask(AddFact(record=fact("alice", "likes", "tea")), timeout=10)
    second = fact_store.ask(AddFact(record=fact("bob", "likes", "tea")), timeout=10)
    again = fact_store.ask(AddFact(record=fact("alice", "likes", "tea")), timeout=10)
    assert isinstance(first, StoredFact) and first.record == fact("alice", "likes", "tea")
    assert second.fact_id != first.fact_id
    assert again == first
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=2, ended=0)


def test_end_fact_and_its_errors(fact_store: pykka.ActorRef[Any]) -> None:
    stored = fact_store.ask(AddFact(record=fact("alice", "likes", "tea")), timeout=10)
    ended = fact_store.ask(EndFact(fact=stored.short_id, ended=500.0), timeout=10)
    assert ended == StoredFact(fact_id=stored.fact_id, record=fact("alice", "likes", "tea", ended=500.0))
    assert ended.key == stored.key  # ending a fact keeps its id
    assert listed(fact_store) == []
    assert listed(fact_store, include_ended=True) == [ended.record]

    with pytest.raises(InputError, match=f"fact {stored.short_id} already ended"):
        fact_store.ask(EndFact(fact=stored.key, ended=600.0), timeout=10)
    with pytest.raises(InputError, match="no fact with id 4242"):
        fact_store.ask(EndFact(fact="4242", ended=600.0), timeout=10)
    with pytest.raises(InputError, match="not a fact id"):
        fact_store.ask(EndFact(fact="fact-1; DROP", ended=600.0), timeout=10)
    with pytest.raises(InputError, match="too short"):
        fact_store.ask(EndFact(fact="abc", ended=600.0), timeout=10)
    # the failed ends changed nothing and the actor still answers
    assert listed(fact_store, include_ended=True)[0].ended == 500.0


def test_a_fact_is_named_by_its_key_a_unique_prefix_or_for_now_its_old_number(fact_store: pykka.ActorRef[Any]) -> None:
    from imprint.messages.records import fact_key
    from imprint.messages.store import ShowFact

    records = [fact(f"s{i}", "p", "o", valid_from=float(i + 1)) for i in range(300)]
    store(fact_store, *records)
    stored = {f.key: f for f in fact_store.ask(ListFacts(limit=1000), timeout=10)}
    assert set(stored) == {fact_key(r.identity) for r in records}  # the id is derived from the fact alone
    one = stored[fact_key(records[7].identity)]
    assert one.short_id == one.key[:8] and len(one.key) == 16
    for ref in (one.key, one.short_id, one.key[:6].upper(), f" {one.key[:12]} "):
        assert fact_store.ask(ShowFact(fact=ref), timeout=10) == one
    absent = next(f"{n:04x}" for n in range(65536) if not any(k.startswith(f"{n:04x}") for k in stored)
                  and not f"{n:04x}".isdigit())
    with pytest.raises(InputError, match=f"no fact with id {absent}"):
        fact_store.ask(ShowFact(fact=absent), timeout=10)
    # the local number older versions printed still names its fact (when no key starts with it)
    assert fact_store.ask(ShowFact(fact=str(one.fact_id)), timeout=10) == one


def test_a_prefix_that_names_several_facts_is_refused_with_what_it_matches(fact_store: pykka.ActorRef[Any]) -> None:
    from imprint.messages.records import fact_key

    # find two facts whose keys share their first 4 digits
    seen: dict[str, FactRecord] = {}
    for i in range(100_000):
        record = fact("twin", "p", str(i))
        prefix = fact_key(record.identity)[:4]
        if prefix in seen:
            break
        seen[prefix] = record
    store(fact_store, seen[prefix], record)
    with pytest.raises(InputError, match=f"fact id {prefix} matches 2 facts .*type more of it"):
        fact_store.ask(EndFact(fact=prefix, ended=600.0), timeout=10)
    assert len(listed(fact_store)) == 2  # nothing ended


def test_a_batch_is_one_transaction(fact_store: pykka.ActorRef[Any], facts_path: Path) -> None:
    store(fact_store, fact("kept", "is", "there"))
    good = [fact("new", "is", str(i)) for i in range(3)]
    # msgspec does not type-check a Struct built in code: SQLite refuses to bind this one, mid-batch.
    unbindable = FactRecord(subject="bad", predicate="is", object="x", valid_from=1.0, source=["not", "text"])  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="fact store error"):
        store(fact_store, *good, unbindable, fact("after", "is", "x"))
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=1, ended=0)
    # the next batch goes through: no transaction was left open
    assert store(fact_store, *good) == StoreResult(inserted=3)

    with sqlite3.connect(facts_path) as db:  # another connection sees exactly the committed rows
        assert db.execute("SELECT COUNT(*) FROM facts").fetchone() == (4,)


def test_database_is_wal_with_a_unique_identity(fact_store: pykka.ActorRef[Any], facts_path: Path) -> None:
    store(fact_store, fact("a", "b", "c"))
    with sqlite3.connect(facts_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO facts (subject, predicate, object, valid_from) VALUES ('a','b','c',100.0)")


def test_facts_survive_a_restart(start_actor: StartActor, fact_store: pykka.ActorRef[Any], facts_path: Path) -> None:
    store(fact_store, fact("a", "b", "c"), fact("d", "e", "f", ended=200.0))
    fact_store.stop(timeout=10)
    reopened = start_actor(FactStore, path=facts_path)
    assert reopened.ask(CountFacts(), timeout=10) == FactCounts(active=1, ended=1)


def test_unopenable_database_surfaces_through_ping(start_actor: StartActor, tmp_path: Path) -> None:
    not_a_db = tmp_path / "facts.db"
    not_a_db.write_bytes(b"this is not an SQLite database at all" * 100)
    ref = start_actor(FactStore, path=not_a_db)
    with pytest.raises(StoreError, match="cannot open the fact store"):
        ref.ask(Ping(), timeout=30)


def test_forgetting_a_fact_deletes_it_and_refuses_older_copies(fact_store: pykka.ActorRef[Any], facts_path: Path) -> None:
    from imprint.messages.records import Tombstone, fact_key
    from imprint.messages.store import (
        ForgetFact,
        ListVersions,
        RetrieveFacts,
        RetrieveTombstones,
        StoreTombstones,
    )

    keep = FactRecord(subject="alice", predicate="likes", object="tea", valid_from=100.0)
    gone = FactRecord(subject="alice", predicate="works_at", object="acme", valid_from=100.0)
    fact_store.ask(StoreFacts(records=(keep, gone)), timeout=10)
    stored = fact_store.ask(ListFacts(subject="alice", predicate="works_at"), timeout=10)[0]

    forgotten = fact_store.ask(ForgetFact(fact=stored.key, deleted_at=500.0), timeout=10)
    assert forgotten.record == gone
    assert [f.record for f in fact_store.ask(ListFacts(include_ended=True), timeout=10)] == [keep]
    assert fact_store.ask(RetrieveTombstones(keys=(fact_key(gone.identity),)), timeout=10) == (
        Tombstone("facts", fact_key(gone.identity), 500.0),)
    with pytest.raises(InputError, match="no fact with id"):
        fact_store.ask(ForgetFact(fact=stored.key, deleted_at=600.0), timeout=10)

    # offered again (not newer): skipped as forgotten; ended after the forget: lives again
    result = fact_store.ask(StoreFacts(records=(gone,)), timeout=10)
    assert (result.inserted, result.forgotten) == (0, 1)
    later = FactRecord(subject="alice", predicate="works_at", object="acme", valid_from=100.0, ended=700.0)
    assert fact_store.ask(StoreFacts(records=(later,)), timeout=10).inserted == 1

    versions = fact_store.ask(ListVersions(), timeout=10)
    assert sorted(versions.records) == sorted([(fact_key(keep.identity), 0.0), (fact_key(later.identity), 700.0)])
    assert versions.tombstones == ((fact_key(gone.identity), 500.0),)
    assert fact_store.ask(RetrieveFacts(keys=(fact_key(keep.identity),)), timeout=10) == (keep,)

    # a tombstone from elsewhere removes the copy it covers, and only that
    result = fact_store.ask(StoreTombstones(tombstones=(Tombstone("facts", fact_key(keep.identity), 150.0),)), timeout=10)
    assert (result.inserted, result.forgotten) == (1, 1)
    assert fact_store.ask(CountFacts(), timeout=10) == FactCounts(active=0, ended=1)
    # …and keeps it in the trash (the user's own forget above did not)
    import msgspec

    from imprint.messages.store import ListTrash, RemoveTrash

    [entry] = fact_store.ask(ListTrash(), timeout=10)
    assert entry.dataset == "facts" and msgspec.msgpack.decode(entry.record, type=FactRecord) == keep
    assert fact_store.ask(RemoveTrash(), timeout=10) == 1


def test_an_older_facts_database_gets_its_keys(start_actor: StartActor, facts_path: Path) -> None:
    from imprint.actors.fact_store import SCHEMA
    from imprint.messages.records import fact_key
    from imprint.messages.store import ListVersions

    facts_path.parent.mkdir(parents=True)
    db = sqlite3.connect(facts_path)
    db.executescript(SCHEMA)  # as earlier versions made it: no key column
    db.execute("INSERT INTO facts (subject, predicate, object, valid_from) VALUES ('a', 'b', 'c', 1.0)")
    db.commit()
    db.close()
    ref = start_actor(FactStore, path=facts_path)
    assert ref.ask(ListVersions(), timeout=10).records == ((fact_key(("a", "b", "c", 1.0)), 0.0),)


def summary_of(versions: Any) -> tuple[int, int]:
    """What SummarizeVersions must say: the sum over what ListVersions lists."""
    from imprint.protocol.items import items_of
    from imprint.protocol.reconcile import item_hash

    items = items_of((), versions.records, (), versions.tombstones)
    return len(items), sum(item_hash(i) for i in items) % (1 << 128)


def test_the_kept_summary_follows_every_write(fact_store: pykka.ActorRef[Any], facts_path: Path) -> None:
    from imprint.messages.records import Tombstone, fact_key
    from imprint.messages.store import (
        ForgetFact,
        ListVersions,
        StoreTombstones,
        SummarizeVersions,
    )

    def check() -> None:
        summary = fact_store.ask(SummarizeVersions(), timeout=10)
        assert (summary.count, summary.total) == summary_of(fact_store.ask(ListVersions(), timeout=10))

    check()  # empty
    facts = [FactRecord(subject=f"s{i}", predicate="p", object="o", valid_from=float(i)) for i in range(6)]
    fact_store.ask(StoreFacts(records=tuple(facts)), timeout=10)
    check()
    ids = {f.record.subject: f.key for f in fact_store.ask(ListFacts(include_ended=True), timeout=10)}
    fact_store.ask(EndFact(fact=ids["s0"], ended=50.0), timeout=10)  # an end by id
    ended = FactRecord(subject="s1", predicate="p", object="o", valid_from=1.0, ended=60.0)
    fact_store.ask(StoreFacts(records=(ended,)), timeout=10)  # an end from a peer
    check()
    fact_store.ask(ForgetFact(fact=ids["s2"], deleted_at=70.0), timeout=10)
    fact_store.ask(StoreTombstones(tombstones=(Tombstone("facts", fact_key(facts[3].identity), 80.0),
                                               Tombstone("facts", fact_key(facts[2].identity), 90.0))), timeout=10)
    check()  # a new tombstone, and a later time for one held
    db = sqlite3.connect(facts_path)  # rows from before the sums were kept (or a write that marked them stale)
    db.execute("UPDATE facts SET h0 = NULL, h1 = NULL, h2 = NULL, h3 = NULL")
    db.commit()
    db.close()
    check()


def test_facts_and_tombstones_dated_ahead_are_repaired_once_on_open(start_actor: StartActor, facts_path: Path,
                                                                   fact_store: pykka.ActorRef[Any]) -> None:
    import time

    from imprint.messages.records import Tombstone, fact_key
    from imprint.messages.store import ListVersions, StoreTombstones

    year_3000 = 32503680000.0
    fact_store.ask(StoreFacts(records=(fact("db", "runs", "postgres", year_3000), fact("db", "runs", "mysql", 100.0,
                                                                                     ended=year_3000))), timeout=10)
    fact_store.ask(StoreTombstones(tombstones=(Tombstone("facts", "ab" * 8, year_3000),)), timeout=10)
    fact_store.stop(timeout=10)
    before = time.time()
    ref = start_actor(FactStore, path=facts_path)
    facts = {f.record.object: f.record for f in ref.ask(ListFacts(include_ended=True), timeout=10)}
    assert before <= facts["postgres"].valid_from <= time.time() and facts["postgres"].ended is None
    assert facts["mysql"].valid_from == 100.0 and before <= facts["mysql"].ended <= time.time()
    versions = ref.ask(ListVersions(), timeout=10)
    assert sorted(k for k, _ in versions.records) == sorted(fact_key(f.identity) for f in facts.values())
    assert versions.tombstones[0][1] <= time.time()
