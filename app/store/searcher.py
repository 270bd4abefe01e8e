"""Executes a parsed SearchRequest: candidate selection, exact matching, keyset paging, includes.

Two ways to find candidates:
- keyed: a filter on a reference or identifier (patient=, subject=, identifier=) is answered from the
  posting lists by _id lookups, so it stays fast on FerretDB v1 (which scans for every other filter);
- database: otherwise the filter, lowered to what FerretDB understands, runs in the database (served by
  the secondary indexes on MongoDB).
Either way every candidate is checked with the exact filter (app.search.matcher) before it is returned.

Paging is keyset, never skip: a cursor carries the sort values and _id of the last entry of a page, so
the next page starts after it even when resources are written in between. A sort key with several values is
stored as [smallest, largest] (app.search.extract): the database sorts it by its smallest element ascending and by
its largest descending, so a row's place, and the value its cursor carries, is that end (`sort_value`). A previous
page reads the database in the opposite order, which sorts such a row by its other end: it is read until no row
left can sort into the page (`_candidates`).

`admit` (the disclosure gate's per-row decision, on the decoded document) is applied to candidates before
paging and counting: pages, totals and cursors are made of rows the caller may see, and a cursor never carries
the sort values of a withheld row. SearchResult.withheld counts the rows it left out while filling the page.
"""

from __future__ import annotations

import base64
import bisect
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.core.errors import bad_request
from app.core.timeutil import naive_utc
from app.search.compile import compile_filter, compile_sort
from app.search.compilers.token import token_key
from app.search.extract import local_reference, sort_value
from app.search.matcher import lower_for_database, matches
from app.search.request import Filter, SearchRequest
from app.search.values import split_escaped
from app.store.keys import identifier_key, reference_key
from app.store.repository import Repository

MAX_KEYED_CANDIDATES = 5000
FETCH_CHUNK = 500  # ids in one $in where the database answers it from the _id index (MongoDB)
MAX_CHAIN_IDS = 1000
MAX_INCLUDE_ROUNDS = 4


@dataclass
class SearchResult:
    resource_type: str
    docs: list[dict[str, Any]]
    total: int | None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    included: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    withheld: int = 0


Admit = Callable[[dict[str, Any]], bool]
# the rows of a sub-search (its type and request) a caller may see (None: all of them)
AdmitOf = Callable[[str, SearchRequest | None], Admit | None]


# -- cursors ------------------------------------------------------------------------------------------

def _enc(v: Any) -> Any:
    return {"d": v.isoformat()} if isinstance(v, datetime) else v


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) != {"d"} or not isinstance(v["d"], str):
            raise ValueError("bad cursor value")
        # Stored dates are naive UTC; a cursor with a zone (never issued, so forged) is read as that instant.
        return naive_utc(datetime.fromisoformat(v["d"]))
    if v is None or isinstance(v, str | int | float | bool):
        return v
    raise ValueError("bad cursor value")


def encode_cursor(direction: str, values: list[Any]) -> str:
    raw = orjson.dumps([direction, [_enc(v) for v in values]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, width: int) -> tuple[str, list[Any]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, values = orjson.loads(raw)
        if direction not in ("n", "p") or not isinstance(values, list) or len(values) != width:
            raise ValueError("bad cursor")
        return direction, [_dec(v) for v in values]
    except (ValueError, TypeError, orjson.JSONDecodeError) as err:
        raise bad_request("_cursor is not a cursor this server issued", expression="_cursor") from err


# -- ordering -----------------------------------------------------------------------------------------

def _get_path(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _cmp_values(a: Any, b: Any) -> int:
    """MongoDB-like order for sort keys: missing first, then numbers, strings, dates (type brackets)."""
    def rank(v: Any) -> int:
        if v is None:
            return 0
        if isinstance(v, bool):
            return 4
        if isinstance(v, int | float):
            return 1
        if isinstance(v, str):
            return 2
        return 3
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if a is None or a == b:
        return 0
    return -1 if a < b else 1


def tie_broken(sort: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The sort with `_id` as its last key, so that rows have one order and a cursor one place in it. Keys after
    `_id` never decide (it is unique), and a sort naming `_id` twice would keep one direction in the database
    while the cursor follows both (`_sort=-_id`: pages repeated rows)."""
    for i, (path, _) in enumerate(sort):
        if path == "_id":
            return sort[: i + 1]
    return [*sort, ("_id", 1)]


def in_sort_order(docs: Iterable[dict[str, Any]], sort: list[tuple[str, int]],
                  row: Callable[[dict[str, Any]], list[Any]] | None = None) -> list[dict[str, Any]]:
    """Documents in `sort` order as the database orders them, in memory; each placed by `row(doc)` (by default its
    sort values for `sort`: a stored [smallest, largest] by the end its direction uses)."""
    place = row or functools.partial(Searcher._row, sort)

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        return _compare_rows(sort, place(a), place(b))

    return sorted(docs, key=functools.cmp_to_key(compare))


def _compare_rows(sort: list[tuple[str, int]], a: list[Any], b: list[Any]) -> int:
    for (_, direction), va, vb in zip(sort, a, b, strict=True):
        c = _cmp_values(va, vb)
        if c:
            return c * direction
    return 0


def _compare(op: str, path: str, v: Any, direction: int) -> dict[str, Any]:
    """MongoDB filter for rows whose sort value for `direction` (a stored list's smallest element ascending, its
    largest descending; a scalar itself) compares to v by op ($gt, $lt, $eq). On a list, `$gt` asks whether some
    element is greater, which is "the largest is"; "the smallest is" means no element is not: $not of the
    opposite. `_id` is never a list."""
    if path == "_id":
        return {path: v} if op == "$eq" else {path: {op: v}}
    if direction == 1:  # the smallest element: greater or equal when none is less
        extra = {"$gt": "$lte", "$eq": "$lt"}.get(op)
    else:  # the largest: less or equal when none is greater
        extra = {"$lt": "$gte", "$eq": "$gt"}.get(op)
    return {path: {op: v, "$not": {extra: v}}} if extra else {path: {op: v}}


def _keyset_condition(sort: list[tuple[str, int]], values: list[Any], after: bool) -> dict[str, Any]:
    """MongoDB filter for rows strictly after (or before) `values` in `sort` order: values are sort values
    (`sort_value` by the directions of `sort`), and so is what each row is compared by."""
    branches = []
    for i, (path, direction) in enumerate(sort):
        eq: list[dict[str, Any]] = []
        for (p, d), v in zip(sort[:i], values[:i], strict=True):
            eq.append(_compare("$eq", p, v, d) if v is not None else {p: {"$exists": False}})
        greater = (direction == 1) == after
        v = values[i]
        cond: dict[str, Any] | None
        if v is None:
            cond = {path: {"$exists": True}} if greater else None
        elif greater:
            cond = _compare("$gt", path, v, direction)
        else:
            cond = {"$or": [_compare("$lt", path, v, direction), {path: {"$exists": False}}]}
        if cond is not None:
            branches.append({"$and": [*eq, cond]} if eq else cond)
    return {"$or": branches} if branches else {"_id": {"$exists": False}}


# -- the searcher -------------------------------------------------------------------------------------

class Searcher:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.registry = repo.registry

    def resolve_ids(self, resource_type: str, request: SearchRequest, admit_of: AdmitOf | None = None) -> list[str]:
        """Ids matching a sub-search (chains), or the ix[collect] values of the matches (_has); bounded. With
        `admit_of`, only rows the caller may see count: a chain or a `_has` would otherwise answer, through the
        outer matches, questions about records (a Patient's name, an Observation's code) it may not read."""
        request.count = MAX_CHAIN_IDS + 1
        self._blind(request)
        resolve = self._resolver(admit_of)
        flt = compile_filter(request, self.registry, resolve)
        admit = admit_of(resource_type, request) if admit_of is not None else None
        docs = self._candidates(resource_type, request, flt, [("_id", 1)], None, MAX_CHAIN_IDS + 1, None,
                                self._gated(admit, None))
        if len(docs) > MAX_CHAIN_IDS:  # cut short, the outer search would silently miss matches
            raise bad_request(f"a chained or _has search finds more than {MAX_CHAIN_IDS} {resource_type} "
                              "resources, too many to search by: add criteria that narrow it", code="too-costly")
        if request.collect:
            return sorted({v for d in docs for v in d.get("ix", {}).get(request.collect, ()) if isinstance(v, str)})
        return [d["_id"] for d in docs]

    def _resolver(self, admit_of: AdmitOf | None) -> Callable[[str, SearchRequest], list[str]]:
        return functools.partial(self.resolve_ids, admit_of=admit_of)

    def search(self, request: SearchRequest, count: int, base_url: str | None = None,
               admit: Admit | None = None, admit_of: AdmitOf | None = None) -> SearchResult:
        """A page of matches. `admit`: the rows of this type the caller may see; `admit_of`: those of any type,
        for the sub-searches of chains and `_has`."""
        rtype = request.resource_type
        self.repo.check_type(rtype)
        self._blind(request)
        flt = compile_filter(request, self.registry, self._resolver(admit_of), base_url=base_url)
        sort = tie_broken(compile_sort(request))
        direction, after = "n", None
        if request.cursor:
            direction, after = decode_cursor(request.cursor, len(sort))
        want = count + 1
        withheld: list[int] = [0]
        keyed: dict[str, Any] = {}  # the posting lists' matches, read once for the page and the total
        docs = self._candidates(rtype, request, flt, sort, (direction, after) if after else None, want, base_url,
                                self._gated(admit, withheld), keyed)
        has_more = len(docs) > count
        docs = docs[:count]
        if direction == "p":
            docs.reverse()
        total = None if request.total == "none" else self._total(
            rtype, request, flt, len(docs), has_more, after is None, base_url, self._gated(admit, None), keyed)
        row = functools.partial(self._row, sort)
        next_cursor = prev_cursor = None
        if docs:
            if has_more or direction == "p":
                next_cursor = encode_cursor("n", row(docs[-1]))
            if after is not None and (direction == "n" or has_more):
                prev_cursor = encode_cursor("p", row(docs[0]))
        decode = functools.partial(self.repo.decode, owned=True)  # rows read for this search only
        included = [(t, decode(d) or d) for t, d in self._includes(request, docs, admit_of)]
        return SearchResult(rtype, [decode(d) or d for d in docs], total, next_cursor, prev_cursor, included,
                            withheld[0])

    def _gated(self, admit: Admit | None, withheld: list[int] | None) -> Admit | None:
        """admit over raw documents (decoded first), counting refusals into withheld[0]."""
        if admit is None:
            return None
        decode = functools.partial(self.repo.decode, owned=True)  # decrypted in place once, reused by the page

        def gated(doc: dict[str, Any]) -> bool:
            ok = admit(decode(doc) or doc)
            if not ok and withheld is not None:
                withheld[0] += 1
            return ok

        return gated

    def _blind(self, request: SearchRequest) -> None:
        if self.repo.protector and not getattr(request, "_blinded", False):
            self.repo.protector.blind_request(request)
            request._blinded = True  # type: ignore[attr-defined]

    def count(self, request: SearchRequest, base_url: str | None = None, admit: Admit | None = None,
              admit_of: AdmitOf | None = None) -> int:
        """How many match (_summary=count): counted whatever _total says, since the count is what was asked."""
        self._blind(request)
        flt = compile_filter(request, self.registry, self._resolver(admit_of), base_url=base_url)
        return self._total(request.resource_type, request, flt, 0, True, True, base_url, self._gated(admit, None))

    @staticmethod
    def _row(sort: list[tuple[str, int]], doc: dict[str, Any]) -> list[Any]:
        """The values a row sorts by in `sort`: of a stored [smallest, largest], the end its direction uses."""
        return [sort_value(_get_path(doc, path), direction == -1) for path, direction in sort]

    def _total(self, rtype: str, request: SearchRequest, flt: dict[str, Any], page_len: int,
               has_more: bool, first_page: bool, base_url: str | None, admit: Admit | None = None,
               keyed_memo: dict[str, Any] | None = None) -> int:
        """How many match (and, with admit, may be shown): counted from rows, never from withheld ones."""
        if first_page and not has_more:
            return page_len
        keyed = self._keyed_matches(rtype, request, flt, base_url, {} if keyed_memo is None else keyed_memo)
        if keyed is not None:
            return sum(1 for d in keyed if admit is None or admit(d))
        lowered = lower_for_database(flt)
        db_filter = {"$and": [lowered, {"del": False}]}
        if lowered == flt and admit is None:
            return self.repo.current(rtype).count_documents(db_filter)
        projection = None if admit is not None else {"res": 0}
        return sum(1 for d in self.repo.current(rtype).find(db_filter, projection)
                   if matches(flt, d) and (admit is None or admit(d)))

    def _keyed_ids(self, rtype: str, request: SearchRequest, base_url: str | None) -> list[str] | None:
        """Candidate ids from the posting lists, when some filter allows it; None otherwise."""
        best: list[str] | None = None
        for f in request.filters:
            # an OR of filters (_compartment) is keyed when each alternative is: the union of their lists
            alternatives = [self._filter_keys(rtype, alt, base_url) for alt in (f.any_of or [f])]
            if not alternatives or any(not keys for keys in alternatives):
                continue
            ids: list[str] = []
            for k in sorted({k for keys in alternatives for k in keys}):
                ids.extend(self.repo.keys.lookup(k))
            ids = sorted(set(ids))
            if best is None or len(ids) < len(best):
                best = ids
        if best is not None and len(best) > MAX_KEYED_CANDIDATES:
            return None
        return best

    def _filter_keys(self, rtype: str, f: Filter, base_url: str | None) -> list[str]:
        """The posting-list keys whose union holds every resource that can match filter f ([] when none do)."""
        if f.chain or f.has or f.any_of or not f.values:
            return []
        param = self.registry.get(rtype, f.code)
        if param is None:
            return []
        keys: list[str] = []
        if param.type == "reference" and f.code in self.repo.keyed_codes(rtype) \
                and (f.modifier is None or f.modifier in param.target):
            for v in f.values:
                target = local_reference(v.value, base_url)
                if "/" not in target:
                    targets = [f.modifier] if f.modifier else list(param.target)
                    if len(targets) != 1:
                        return []
                    target = f"{targets[0]}/{target}"
                if "://" in target:
                    return []
                keys.append(reference_key(rtype, target))
        elif f.code == "identifier" and f.modifier is None and param.type == "token":
            for v in f.values:
                parts = split_escaped(v.value, "|")  # system|value, each with its escapes (\, \| \$ \\)
                if len(parts) != 2 or not parts[0] or not parts[1]:
                    return []
                keys.append(identifier_key(rtype, token_key(v.value)))  # indexed unescaped, as compile does
        return keys

    def _keyed_matches(self, rtype: str, request: SearchRequest, flt: dict[str, Any], base_url: str | None,
                       memo: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The documents the posting lists name that match flt, in _id order (None when no filter is keyed).
        A search asks twice (its page, then its total); the lists and documents are read the first time only,
        since reading them costs one round trip a candidate."""
        if "docs" not in memo:
            ids = self._keyed_ids(rtype, request, base_url)
            memo["docs"] = None if ids is None else [d for d in self._fetch(rtype, ids) if matches(flt, d)]
        found: list[dict[str, Any]] | None = memo["docs"]
        return found

    def _fetch(self, rtype: str, ids: list[str]) -> list[dict[str, Any]]:
        """The live documents of these ids, in their order."""
        col = self.repo.current(rtype)
        if self.repo.handle.supports_secondary_indexes:  # MongoDB: the _id index serves $in, FETCH_CHUNK at a time
            found: dict[str, dict[str, Any]] = {}
            for i in range(0, len(ids), FETCH_CHUNK):
                found.update((d["_id"], d) for d in col.find({"_id": {"$in": ids[i:i + FETCH_CHUNK]}}))
            docs = [found[rid] for rid in ids if rid in found]
        else:  # FerretDB v1 scans the collection for $in: one _id lookup a candidate
            docs = [d for d in (col.find_one({"_id": rid}) for rid in ids) if d is not None]
        return [d for d in docs if not d.get("del")]

    def _candidates(self, rtype: str, request: SearchRequest, flt: dict[str, Any], sort: list[tuple[str, int]],
                    cursor: tuple[str, list[Any]] | None, want: int, base_url: str | None,
                    admit: Admit | None = None, keyed_memo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The first `want` matches in `sort` order after the cursor (before it, for a previous page: then in the
        opposite order). Rows are placed by their sort values for `sort` (`row`) whichever way they are read."""
        direction = cursor[0] if cursor else "n"
        order = sort if direction == "n" else [(p, -d) for p, d in sort]
        row = functools.partial(self._row, sort)
        keyed = self._keyed_matches(rtype, request, flt, base_url, {} if keyed_memo is None else keyed_memo)
        if keyed is not None:
            docs = in_sort_order(keyed, order, row)  # a sorted copy: the memo keeps its order for the total
            if cursor:
                docs = [d for d in docs if _compare_rows(order, row(d), cursor[1]) > 0]
            if admit is not None:
                kept: list[dict[str, Any]] = []
                for d in docs:
                    if len(kept) >= want:
                        break
                    if admit(d):
                        kept.append(d)
                return kept
            return docs[:want]
        conditions = [lower_for_database(flt), {"del": False}]
        if cursor:
            conditions.append(_keyset_condition(sort, cursor[1], after=direction == "n"))
        # The database reads in `order`, placing a row by its values for `order` (`read_at`). Going forward that
        # is its place in the page (`row`); going back, a [smallest, largest] key is read by its other end, which
        # is never later in `order` than its place: once a row is read later than the want-th match so far, no
        # row left can come before that match, and the reading stops.
        col = self.repo.current(rtype)
        read_at = functools.partial(self._row, order)
        place = functools.cmp_to_key(functools.partial(_compare_rows, order))
        out: list[dict[str, Any]] = []  # the matches so far, in `order` by their places, at most `want`
        batch = max(want, 50)
        seen_last: list[Any] | None = None
        while True:
            conds = list(conditions)
            if seen_last is not None:
                conds.append(_keyset_condition(order, seen_last, after=True))
            rows = list(col.find({"$and": conds}).sort(order).limit(batch))
            for d in rows:
                if len(out) >= want and _compare_rows(order, read_at(d), row(out[-1])) > 0:
                    return out
                if matches(flt, d) and (admit is None or admit(d)):
                    bisect.insort(out, d, key=lambda x: place(row(x)))
                    del out[want:]
            if len(rows) < batch:
                return out
            seen_last = read_at(rows[-1])

    # -- _include / _revinclude --------------------------------------------------------------------------

    def _includes(self, request: SearchRequest, docs: list[dict[str, Any]],
                  admit_of: AdmitOf | None = None) -> list[tuple[str, dict[str, Any]]]:
        """_include and _revinclude over the matches (the :iterate ones too: search.html#revinclude applies them to
        the matches and to the included resources), then the :iterate ones over everything included so far, until
        nothing new appears (at most MAX_INCLUDE_ROUNDS rounds). With `admit_of`, a resource the caller may not
        see is neither included nor walked through: :iterate would otherwise reach, past it, what it links to."""
        included: list[tuple[str, dict[str, Any]]] = []
        seen = {(request.resource_type, d["_id"]) for d in docs}
        primary = [(request.resource_type, d) for d in docs]

        def add(rtype: str, doc: dict[str, Any]) -> None:
            seen.add((rtype, doc["_id"]))
            admit = admit_of(rtype, None) if admit_of is not None else None
            if admit is None or admit(doc):
                included.append((rtype, doc))

        for rtype, doc in self._include_round(request, primary, seen, iterate=None):
            add(rtype, doc)
        frontier = list(included)
        for _ in range(MAX_INCLUDE_ROUNDS):
            if not frontier or not any(i.iterate for i in (*request.includes, *request.revincludes)):
                break
            before = len(included)
            for rtype, doc in self._include_round(request, primary + included, seen, iterate=True):
                add(rtype, doc)
            frontier = included[before:]
        return included

    def _include_round(self, request: SearchRequest, sources: list[tuple[str, dict[str, Any]]],
                       seen: set[tuple[str, str]], iterate: bool | None) -> list[tuple[str, dict[str, Any]]]:
        """One round of the includes (iterate None: all of them; True: the :iterate ones) over `sources`."""
        out: list[tuple[str, dict[str, Any]]] = []
        for inc in request.includes:
            if iterate and not inc.iterate:
                continue
            for rtype, doc in sources:
                if rtype != inc.source_type:
                    continue
                codes = [inc.code] if inc.code != "*" else [
                    c for c, p in self.registry.params(rtype).items() if p.type == "reference"]
                for code in codes:
                    for ref in doc.get("ix", {}).get(code, ()):
                        if not isinstance(ref, str) or "/" not in ref or "://" in ref:
                            continue
                        ttype, tid = ref.split("/", 1)
                        if inc.target_type and ttype != inc.target_type:
                            continue
                        if ttype in self.repo.resource_types and (ttype, tid) not in seen:
                            target = self.repo.get_doc(ttype, tid)
                            if target and not target.get("del"):
                                seen.add((ttype, tid))
                                out.append((ttype, target))
        for inc in request.revincludes:
            if (iterate and not inc.iterate) or inc.source_type not in self.repo.resource_types:
                continue
            for rtype, doc in sources:
                ref = f"{rtype}/{doc['_id']}"
                if inc.target_type and inc.target_type != rtype:
                    continue
                codes = [inc.code] if inc.code != "*" else [
                    c for c, p in self.registry.params(inc.source_type).items() if p.type == "reference"]
                for code in codes:
                    for rid in self.repo.keys.lookup(reference_key(inc.source_type, ref)):
                        if (inc.source_type, rid) in seen:
                            continue
                        other = self.repo.get_doc(inc.source_type, rid)
                        if other and not other.get("del") and ref in other.get("ix", {}).get(code, ()):
                            seen.add((inc.source_type, rid))
                            out.append((inc.source_type, other))
        return out
