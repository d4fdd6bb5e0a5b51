"""The service's answers to the requests that are about one store: a request in, the core's call out.

Shared by the service (a client's request) and by what runs inside it and asks
the same things without a socket (the chat's tools), so both have one
implementation.
"""

from __future__ import annotations

from typing import Any, Callable

from imprint.errors import InputError
from imprint.messages.store import MemoryFilter
from imprint.service import protocol as p


def answer(core: Any, request: Any, note: Callable[[str], None]) -> Any:
    """What `core` answers to `request` (a store-level request of :mod:`imprint.service.protocol`)."""
    match request:
        case p.ModelOf():
            return core.model()
        case p.Remember(records=records, given=given, chunk=chunk):
            vectors = {(g.id, g.hash): _floats(g.vector) for g in given}
            return core.remember(records, given=vectors, note=note, chunk=chunk)
        case p.Search(query=query, k=k, project=project, memory_type=type_, source=source):
            where = MemoryFilter(project=project, type=type_, source=source) if type_ or source else None
            return core.search(query, k=k, project=project, note=note, where=where)
        case p.StoreDocuments(documents=documents, replace=replace):
            return core.store_documents(documents, replace=replace, note=note)
        case p.SourceChunks(source=source, project=project, start=start, end=end):
            return core.source_chunks(source, project=project, start=start, end=end)
        case p.Sources(project=project, limit=limit):
            return core.sources(project=project, limit=limit)
        case p.OverviewOf():
            return core.overview()
        case p.Get(ids=ids):
            return core.get(ids)
        case p.Count(where=where):
            return core.count(where)
        case p.Forget(ids=ids, where=where):
            return core.forget(ids=ids, where=where)
        case p.MemoryPageOf(after=after, limit=limit, vectors=vectors):
            return core.memory_page(after=after, limit=limit, vectors=vectors)
        case p.FactPageOf(after=after, limit=limit):
            return core.fact_page(after=after, limit=limit)
        case p.FactAdd(record=record):
            return core.add_fact(record)
        case p.FactEnd(fact=ref):
            return core.end_fact(ref)
        case p.FactShow(fact=ref):
            return core.show_fact(ref)
        case p.FactForget(fact=ref):
            return core.forget_fact(ref)
        case p.FactList(subject=subject, predicate=predicate, include_ended=include_ended, limit=limit,
                        object=object_, as_of=as_of):
            return core.list_facts(subject=subject, predicate=predicate, include_ended=include_ended, limit=limit,
                                   object=object_, as_of=as_of)
        case p.TrashList(since=since, peer=peer, ids=ids, limit=limit):
            return core.trash(since=since, peer=peer, ids=ids, limit=limit)
        case p.TrashRestore(since=since, peer=peer, ids=ids):
            from imprint.core import trash_id

            entries = core.trash(since=since, peer=peer, ids=ids, limit=10**9)
            unknown = sorted({i.strip().lower() for i in ids} - {trash_id(e) for e in entries})
            if unknown:
                raise InputError(f"nothing in the trash is {', '.join(unknown[:5])} (see `imprint trash`); "
                                 "nothing was restored")
            return core.restore(entries, note=note)
        case p.ChatConversations(limit=limit):
            return core.conversations().list(limit=max(1, min(limit, 1000)))
        case p.TrashEmpty():
            return core.empty_trash()
    raise InputError(f"the service does not answer {type(request).__name__}")


def _floats(vector: bytes) -> list[float]:
    import array

    values = array.array("f")
    if len(vector) % 4:
        raise InputError("a vector given with a record is not float32")
    values.frombytes(vector)
    return values.tolist()
