"""Bulk import of existing hospital card systems into the index (批量预制: `ehc import`, docs/mpi.md).

Input: CSV with the columns source_system, mrn, name, gender, birth_date, id_type, id_number, phone, address
(only source_system, mrn and name are required; id_type a document code of CV02.01.101 such as 01, or a name
such as 身份证 / resident-id / passport: ID_TYPE_ALIASES), or NDJSON with one Patient per line; UTF-8, or GB18030 /
GBK when the caller says so (`text_lines`, `check_header`). Streamed row by row:
memory stays flat whatever the file size. Every row goes through the same path as POST /fhir/Patient
(Repository.create and the MPI / card event handlers), with 15-digit legacy ID numbers accepted and
normalised, and every row gets one report row: created | linked | unchanged | rejected (with the reason).

Idempotent: a row whose identifiers already belong to one resident and that adds nothing to the record is
'unchanged' without a write (after the check POST makes: a row contradicting that resident is rejected with
409). Each row is one Patient write whose claims name it, so a run killed at any point completes when rerun,
without duplicates or half-written residents. A row without an identifier the master index claims (NDJSON:
only systems the identifier registry does not know) is matched to the Patient holding exactly its identifiers,
as a conditional create on identifier=system|value is (`Importer._write_unindexed`); a row without any
identifier is rejected: nothing could tell its rerun from a new resident.

A CSV row whose quotes are malformed is rejected when the error ends with its own line; a quote that runs on
past its line (an unclosed quote swallows the rows after it) stops the run at that line, after the rows before
it are imported and reported (`read_rows`, `Importer.run`).

Batches (`batch_size` > 1, `ehc import --batch`, the default): the new residents of a batch of rows are written
together, with the commands of a few rows (`Importer.process_batch`: leases, claims, Patients, postings, name
lists and card records each in one command), through the same validation, normalisation, pre-create events
and change gate; every other row (one that matches a registered resident, shares an identifier with another
row of the batch, meets a lease or claim held already, or is refused) takes the one-row path above, so each row
gets the report it gets when the rows are imported one at a time.
"""

from __future__ import annotations

import codecs
import csv
import json
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from app.core.errors import FhirError
from app.core.ids import new_id
from app.fhir.interactions import criteria_lease
from app.mpi.identifiers import IdentifierInvalid, normalize_patient_identifiers
from app.mpi.index import adds_nothing, check_same_resident, merge_into
from app.mpi.plugin import BATCH_CLAIMED, BATCH_NAMES, MpiHooks
from app.search.parser import parse_search
from app.search.values import escape
from app.services import Services
from app.store.repository import REBASE, Rebase, WriteContext

CSV_COLUMNS = ("source_system", "mrn", "name", "gender", "birth_date", "id_type", "id_number", "phone", "address")
REQUIRED_COLUMNS = ("source_system", "mrn", "name")  # the others may be left out of the file
MRN_PREFIX = "urn:ehc:mrn:"
# Names accepted for id_type besides the document codes, the NamingSystem names and systems (docs/mpi.md).
ID_TYPE_ALIASES = {
    "01": ("身份证", "居民身份证", "resident-id", "resident-id-card", "id-card", "idcard", "sfz"),
    "02": ("户口簿", "户口本", "household-register"),
    "03": ("护照", "passport"),
    "04": ("军官证", "officer", "officer-card"),
    "05": ("驾驶证", "驾照", "driving-licence", "driving-license"),
    "06": ("港澳通行证", "港澳居民来往内地通行证", "hk-macau-permit"),
    "07": ("台胞证", "台湾居民来往大陆通行证", "taiwan-permit"),
    "99": ("外国人永久居留身份证", "永久居留证", "foreigner-permanent-residence"),
}
REPORT_COLUMNS = ("row", "outcome", "patient_id", "ehc_id", "reason")
SAMPLE_BYTES = 1 << 16  # the start of the file checked before anything is written
EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"
GENDERS = {"male": "male", "m": "male", "男": "male", "1": "male", "female": "female", "f": "female",
           "女": "female", "2": "female", "other": "other", "unknown": "unknown", "0": "unknown", "9": "unknown",
           "": None}
COMPOUND_SURNAMES = frozenset("欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 夏侯 轩辕 令狐 钟离 "
                              "闻人 澹台 公羊 赫连 端木 独孤 南宫 万俟 呼延 申屠 百里 东郭 西门 太史".split())
Validate = Callable[[dict[str, Any]], list[str]]
# A batch must be written well within the leases' time (Leases.ttl, 10 s: then a waiter takes an expired lease
# over). 500 new residents take about 1-2 s on a loaded machine; a batch slower than this halves the next ones.
BATCH_SECONDS = 2.5
MIN_BATCH = 25
PIPELINE = 2  # batches being written at once (Importer._pipelined)
NO_IDENTIFIER = ("the row has no identifier (system and value): a rerun could not tell it from a new resident; "
                 "give the hospital's record number (urn:ehc:mrn:<organization id>) or an ID number")


class RowRejected(ValueError):
    pass


@dataclass
class RowResult:
    row: int
    outcome: str  # created | linked | unchanged | rejected
    patient_id: str = ""
    ehc_id: str = ""
    reason: str = ""


def split_name(name: str) -> dict[str, Any]:
    text = name.strip()
    if not text:
        raise RowRejected("name is empty")
    if " " in text or not text.isalpha() or text.isascii():
        return {"text": text}
    family_len = 2 if text[:2] in COMPOUND_SURNAMES and len(text) > 2 else 1
    return {"text": text, "family": text[:family_len], "given": [text[family_len:]]} if len(text) > 1 \
        else {"text": text}


def birth_date(value: str) -> str | None:
    v = value.strip().replace("/", "-")
    if not v:
        return None
    if len(v) == 8 and v.isdigit():
        v = f"{v[:4]}-{v[4:6]}-{v[6:]}"
    if len(v) != 10 or v[4] != "-" or v[7] != "-" or not (v[:4] + v[5:7] + v[8:]).isdigit():
        raise RowRejected(f"birth_date {value!r} is not YYYY-MM-DD")
    return v


def id_type_system(value: str, registry: Any) -> str:
    """The identifier system of an id_type: a document code (01, 1), a name (身份证, resident-id, passport,
    Passport, 护照 ...) or the system itself (urn:oid:2.16.156.10011.1.3, urn:ehc:id:passport)."""
    text = value.strip()
    if text.isdigit():
        return str(registry.system_for_code(text.zfill(2)))
    wanted = text.casefold()
    for code, aliases in ID_TYPE_ALIASES.items():
        if wanted in aliases:
            return str(registry.system_for_code(code))
    for doc in registry.documents:
        if doc.prefix or doc.server_issued:
            continue
        names = {doc.system.casefold(), doc.name_zh.casefold(), doc.name_en.casefold(),
                 doc.system.rsplit(":", 1)[-1].casefold()}
        if wanted in names:
            return str(doc.system)
    raise IdentifierInvalid(f"unknown id_type {value!r} (a document code such as 01, or a name such as 身份证, "
                            "resident-id, passport: see docs/mpi.md)", field="type")


def mrn_system(source_system: str) -> str:
    """The record-number system of a source: an organization id (hospital-1) or the full system
    (urn:ehc:mrn:hospital-1)."""
    text = source_system.strip()
    return text if text.startswith(MRN_PREFIX) else MRN_PREFIX + text


def csv_patient(row: dict[str, str], registry: Any) -> dict[str, Any]:
    """One CSV row as a Patient (RowRejected for what the row itself gets wrong)."""
    get = {k: (row.get(k) or "").strip() for k in CSV_COLUMNS}
    if not get["source_system"] or not get["mrn"]:
        raise RowRejected("source_system and mrn are required")
    idents = [{"system": mrn_system(get["source_system"]), "value": get["mrn"]}]
    if get["id_number"]:
        if not get["id_type"]:
            raise RowRejected("id_number without id_type")
        try:
            system = id_type_system(get["id_type"], registry)
        except IdentifierInvalid as exc:
            raise RowRejected(f"id_type: {exc.reason}") from None
        idents.insert(0, {"system": system, "value": get["id_number"]})
    res: dict[str, Any] = {"resourceType": "Patient", "identifier": idents, "name": [split_name(get["name"])]}
    gender = get["gender"].lower()
    if gender not in GENDERS:
        raise RowRejected(f"gender {get['gender']!r} is not male/female/男/女/1/2")
    if GENDERS[gender]:
        res["gender"] = GENDERS[gender]
    born = birth_date(get["birth_date"])
    if born:
        res["birthDate"] = born
    if get["phone"]:
        res["telecom"] = [{"system": "phone", "value": get["phone"], "use": "mobile"}]
    if get["address"]:
        res["address"] = [{"text": get["address"]}]
    return res


def read_rows(path: Path, registry: Any, encoding: str = "utf-8"
              ) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """(row number from 1, Patient or the reason it cannot be one), one at a time."""
    with closing(text_lines(path, encoding)) as fh:
        if is_ndjson(path, encoding):
            n = 0
            for line in fh:
                if not line.strip():
                    continue
                n += 1
                try:
                    res = json.loads(line)
                    if not isinstance(res, dict) or res.get("resourceType") != "Patient":
                        raise RowRejected("the line is not a Patient resource")
                    yield n, res
                except (ValueError, RowRejected) as exc:
                    yield n, exc if isinstance(exc, RowRejected) else RowRejected(f"invalid JSON: {exc}")
            return
        # strict: a quote that closes inside a field, or never, is an error rather than text read on
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader, None) or []
        except csv.Error as exc:
            raise ValueError(f"{path}: the header (line 1) cannot be read as CSV: {exc}") from None
        check_columns(path, header)
        n = 0
        while True:
            start = reader.line_num + 1  # the line the next row starts on
            try:
                fields = next(reader, None)
            except csv.Error as exc:
                if reader.line_num <= start:
                    # The error ends with the row's own line, so the next line starts the next row: the row is
                    # rejected and the rest read.
                    n += 1
                    yield n, RowRejected(f"line {start}: {quote_problem(exc)}")
                    continue
                raise ValueError(unreadable(path, start, quote_problem(exc, reader.line_num))) from None
            if fields is None:
                return
            if not fields:  # a blank line (DictReader skipped them too)
                continue
            if reader.line_num > start and len(fields) != len(header):
                # A quoted field ran over line ends and the columns do not come out right: an unclosed quote that
                # a later one closed. Where the row ends cannot be known.
                raise ValueError(unreadable(path, start, f"a quoted field runs from line {start} to line "
                                            f"{reader.line_num} and leaves {len(fields)} columns where the header "
                                            f"has {len(header)}: a quote (\") opened in it is not closed"))
            n += 1
            try:
                yield n, csv_patient(dict(zip(header, fields, strict=False)), registry)  # as DictReader
            except RowRejected as exc:
                yield n, exc


def quote_problem(exc: csv.Error, through: int | None = None) -> str:
    """What a csv.Error of a strict reader means, in words an operator acts on."""
    text = str(exc)
    if "field limit" in text:
        where = f", through line {through}" if through else ""
        return (f"a field runs past {csv.field_size_limit():,} characters{where}: a quote (\") opened in it is "
                "probably never closed")
    if "unexpected end of data" in text:
        return "a quote (\") opened in it is never closed"
    if "expected after" in text and through:
        return (f"a quote (\") opened in it is not closed on its line: the next quote, on line {through}, was "
                "read as its end")
    if "expected after" in text:
        return (f"a quote (\") closes a field before its end ({text}): quote whole fields, and double a quote "
                "inside one (\"\")")
    return f"malformed CSV ({text})"


def unreadable(path: Path, start: int, problem: str) -> str:
    return (f"{path}: the row starting on line {start} cannot be read: {problem}. Where that row ends cannot be "
            f"known, so the import stopped there: the rows before line {start} are imported and in the report. "
            "Correct the quotes on that line and run the same command again (the rows imported already are "
            "reported unchanged)")


def check_columns(path: Path, fieldnames: Any) -> None:
    """ValueError naming the required columns a CSV header lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in (fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing CSV columns {', '.join(missing)} (required: "
                         f"{', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(CSV_COLUMNS[3:])})")


def check_header(path: Path, encoding: str = "utf-8") -> None:
    """Check what can be checked before anything is written: the file's start decodes in `encoding` (and, for
    another encoding, is not UTF-8 that it would misread), and a CSV file's header has the required columns."""
    with open(path, "rb") as fh:
        start = fh.read(SAMPLE_BYTES)
    try:  # not final: the sample may end inside a character
        codecs.getincrementaldecoder(_codec(encoding))().decode(start, final=False)
    except UnicodeDecodeError:
        raise ValueError(undecodable(path, encoding)) from None
    if encoding != "utf-8" and not start.isascii():
        try:
            codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
        except UnicodeDecodeError:
            pass
        else:
            raise ValueError(f"{path} reads as UTF-8 text: --encoding {encoding} would misread its names; "
                             "leave --encoding out")
    if is_ndjson(path, encoding):
        return
    with closing(text_lines(path, encoding)) as lines:
        try:
            header = next(csv.reader(lines), None)
        except csv.Error as exc:
            raise ValueError(f"{path}: the header (line 1) cannot be read as CSV: {exc}") from None
        check_columns(path, header)


def text_lines(path: Path, encoding: str = "utf-8") -> Generator[str, None, None]:
    """The input file's lines (with their line ends, as the csv module wants them). Bytes the encoding cannot
    decode are a ValueError that says what to do."""
    with open(path, encoding=_codec(encoding), newline="") as fh:
        try:
            yield from fh
        except UnicodeDecodeError:
            raise ValueError(undecodable(path, encoding)) from None


def undecodable(path: Path, encoding: str) -> str:
    if encoding == "utf-8":
        return (f"{path} is not UTF-8 text. Files saved by Excel on a Chinese system, and by many hospital "
                "systems, are GBK: import it with --encoding gb18030 (GBK's superset), or convert it first "
                f"(iconv -f GB18030 -t UTF-8 {path})")
    return f"{path} is not {encoding} text; check --encoding (the default is utf-8)"


def _codec(encoding: str) -> str:
    return "utf-8-sig" if encoding == "utf-8" else encoding  # a UTF-8 file may start with a byte order mark


def is_ndjson(path: Path, encoding: str = "utf-8") -> bool:
    suffix = path.suffix.lower()
    if suffix in (".ndjson", ".jsonl", ".json"):
        return True
    if suffix == ".csv":
        return False
    with closing(text_lines(path, encoding)) as lines:
        head = next((line for line in lines if line.strip()), "")
    return head.lstrip().startswith("{")


def count_rows(path: Path, encoding: str = "utf-8") -> int:
    """Lines, counted as 0x0A bytes: right for the encodings `ehc import` takes (app.cli.imports.ENCODINGS)."""
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n if is_ndjson(path, encoding) else max(n - 1, 0)


class Importer:
    def __init__(self, svc: Services, hooks: MpiHooks, validate: Validate | None = None,
                 province: str | None = None, batch_size: int = 1) -> None:
        self.svc = svc
        self.hooks = hooks
        self.index = hooks.index
        self.registry = hooks.registry
        self.validate = validate
        self.province = province or svc.settings.province
        self.batch_size = batch_size  # rows written together (process_batch); 1: one row at a time
        self._pool: ThreadPoolExecutor | None = None  # the one-row path of a batch's other rows (--workers)

    def process(self, n: int, item: dict[str, Any] | Exception) -> RowResult:
        if isinstance(item, Exception):
            return RowResult(n, "rejected", reason=str(item))
        try:
            prepared = self._prepare(n, item)
        except FhirError as err:
            return _rejected(n, err)
        return prepared if isinstance(prepared, RowResult) else self._one(n, prepared)

    def _prepare(self, n: int, resource: dict[str, Any]) -> dict[str, Any] | RowResult:
        """The row's Patient validated and with its identifiers normalised, or its 'rejected' result
        (FhirError for what the identifier rules refuse)."""
        resource = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        if self.validate is not None:  # CSV rows too: a cell may hold what a FHIR string may not (U+0000)
            problems = self.validate(resource)
            if problems:
                return RowResult(n, "rejected", reason="; ".join(problems))
        normalised, issues = normalize_patient_identifiers(resource, self.registry, allow_legacy=True)
        if issues:
            raise FhirError(422, issues[0].diagnostics, issues=issues)
        return normalised

    def _write_one(self, n: int, normalised: dict[str, Any]) -> RowResult:
        entries = self.index.entries(normalised)
        if not entries:
            return self._write_unindexed(n, normalised)
        existing = self._existing(normalised)
        if existing is not None and adds_nothing(existing, normalised):
            # Not written, but judged as POST judges it (MpiHooks._settle): a row naming the resident by its
            # identifiers with another name, birth date, gender or lifelong document is refused (409).
            check_same_resident(existing, normalised, entries, self.index.entries(existing), str(existing["id"]))
            return RowResult(n, "unchanged", existing["id"], _card(existing))
        ctx = WriteContext(province=self.province, client_id="ehc-import", extra={"allow_legacy": True})
        stored = self.svc.repo.create("Patient", normalised, ctx)
        res = stored.resource or {}
        return RowResult(n, "created" if stored.vid == 1 else "linked", stored.id, _card(res))

    def _write_unindexed(self, n: int, res: dict[str, Any]) -> RowResult:
        """A row none of whose identifiers the master index claims (their systems are not in the identifier
        registry): the master index cannot find it again, so the import matches it as a conditional create on
        identifier=system|value for each of its identifiers would (under the same lease, `criteria_lease`): the
        Patient holding every one of them is the row's resident, judged (409), added to as a registration adds
        (phones, missing elements; from another province: identifiers only) or left unchanged; none: a new
        resident; several: rejected (412). POST /fhir/Patient itself is unchanged."""
        idents = _plain_identifiers(res)
        if not idents:
            return RowResult(n, "rejected", reason=NO_IDENTIFIER)
        params = [("identifier", f"{escape(system)}|{escape(value)}") for system, value in idents]  # as a client
        ctx = WriteContext(province=self.province, client_id="ehc-import", extra={"allow_legacy": True})
        with self.svc.leases.hold(criteria_lease("Patient", params)):
            matches = self._holders(params)
            if len(matches) > 1:
                shown = ", ".join(f"Patient/{d['_id']}" for d in matches)
                return RowResult(n, "rejected", reason=f"412 the identifiers of the row ({_shown(idents)}) "
                                                       f"belong to several Patients ({shown})")
            if not matches:
                stored = self.svc.repo.create("Patient", res, ctx)
                return RowResult(n, "created" if stored.vid == 1 else "linked", stored.id,
                                 _card(stored.resource or {}))
            doc = matches[0]
            pid, existing = str(doc["_id"]), doc["res"]
            check_same_resident(existing, res, [], self.index.entries(existing), pid)
            home = str(doc.get("prov") or self.svc.settings.province)
            offered = res if self.province == home else {"identifier": list(res.get("identifier") or [])}
            merged = merge_into(existing, offered)
            if merged == existing:
                return RowResult(n, "unchanged", pid, _card(existing))
            ctx.extra[REBASE] = {pid: Rebase(int(doc["vid"]), lambda current: merge_into(current, offered))}
            stored = self.svc.repo.update("Patient", pid, merged, context=ctx, registration=True)
            return RowResult(n, "unchanged" if stored.unchanged else "linked", stored.id,
                             _card(stored.resource or {}))

    def _holders(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The live Patients holding every one of these identifiers, as the search a conditional create runs finds
        them (the store's search, without a caller to judge: the import is the server's), merged records followed
        to their target."""
        request = parse_search("Patient", params, self.svc.registry, strict=True,
                               max_count=self.svc.settings.max_count)
        found: dict[str, dict[str, Any]] = {}
        for doc in self.svc.searcher.search(request, self.svc.settings.max_count).docs:
            target = self.index.resolve(str(doc["_id"]))
            if target is not None:
                found[str(target["_id"])] = target
        return [found[k] for k in sorted(found)]

    def _row_keys(self, res: dict[str, Any]) -> list[str]:
        """What rows must not be written at once: the claim keys of the row's identifiers, or for a row without
        any (`_write_unindexed`), its identifiers themselves."""
        keys = [e.key for e in self.index.entries(res)]
        return keys or [f"u|{system}|{value}" for system, value in _plain_identifiers(res)]

    def process_batch(self, items: list[tuple[int, dict[str, Any] | Exception]]) -> list[RowResult]:
        """The results of a batch of rows, in input order, each exactly what `process` gives for it when the
        rows are imported one after the other; the new residents among them written with the commands of a
        few rows.

        1. Every row is validated and normalised as in `process` (the same functions). Rows without a claimable
           identifier and rows sharing an identifier with another row of the batch go to the one-row path.
        2. `Leases.hold_many`: the leases "mpi|<claim key>" of every other row in one insert_many; a row with
           a lease held elsewhere goes to the one-row path (which waits for it, or takes it over once expired).
        3. `MasterIndex.claim_new_many`: a claim naming a fresh patient id for every identifier of those rows,
           in one insert_many; a row with an identifier claimed already (a registered resident, a rerun, or a
           claim left by a failed write) drops the claims just inserted for it and goes to the one-row path,
           which links it, refuses it or reports it unchanged.
        4. `Repository.create_many` of the rest: the pre-create events of each Patient (the master index sees
           the batch's claims in the WriteContext; the card is issued), the change gate, the posting lists,
           one insert_many of the Patients, the created event of each; the name postings and the card records
           of the batch are then written together (`MasterIndex.add_names_many`, `CardStore.batched`). A row
           that a handler or the gate refuses drops its claims and goes to the one-row path, which refuses it
           with the same words.
        5. The batch's leases are released in one command, then the one-row path takes its rows in order.

        Crash safety, step by step: leases of a killed process expire (Leases.ttl); a claim whose Patient does
        not exist is free for the next holder of its lease (the master index's rule), so a process killed after
        step 3 leaves no resident, and the rerun registers the rows; posting lists written before the Patients
        may name ids that do not exist (candidates are re-checked); Patients inserted before name postings or
        card records were written are found by their identifiers and cards (as after a single POST killed
        between its write and its created event), and a rerun reports them unchanged."""
        return self.write_batch(self.prepare_batch(items))[0]

    def prepare_batch(self, items: list[tuple[int, dict[str, Any] | Exception]]) -> PreparedBatch:
        """Step 1 of process_batch (no database access): every row validated and normalised, the rows that
        may be written together sorted from those that take the one-row path."""
        results: dict[int, RowResult] = {}
        slow: list[tuple[int, dict[str, Any]]] = []
        rows: list[tuple[int, dict[str, Any], list[str]]] = []
        for n, item in items:
            if isinstance(item, Exception):
                results[n] = RowResult(n, "rejected", reason=str(item))
                continue
            try:
                prepared = self._prepare(n, item)
            except FhirError as err:
                results[n] = _rejected(n, err)
                continue
            if isinstance(prepared, RowResult):
                results[n] = prepared
                continue
            keys = [e.key for e in self.index.entries(prepared)]
            if keys:
                rows.append((n, prepared, keys))
            else:
                slow.append((n, prepared))
        seen: dict[str, int] = {}
        for _, _, keys in rows:
            for key in keys:
                seen[key] = seen.get(key, 0) + 1
        fast = [(n, res, keys) for n, res, keys in rows if all(seen[k] == 1 for k in keys)]
        slow += [(n, res) for n, res, keys in rows if not all(seen[k] == 1 for k in keys)]
        every_key = set(seen) | {k for _, res in slow for k in self._row_keys(res)}
        return PreparedBatch([n for n, _ in items], results, fast, slow, every_key)

    def write_batch(self, batch: PreparedBatch) -> tuple[list[RowResult], float]:
        """Steps 2-5 of process_batch: the results in input order, and how long the batch held its leases."""
        results, slow = batch.results, list(batch.slow)
        held = 0.0
        if batch.fast:
            more, held = self._write_new(batch.fast, results)
            slow += more
        # The one-row path. Rows sharing no identifier with another of them do not depend on each other's
        # order: they run on the pool (--workers); the others one after the other, in input order.
        slow.sort(key=lambda r: r[0])
        shared: dict[str, int] = {}
        slow_keys = {n: self._row_keys(res) for n, res in slow}
        for keys in slow_keys.values():
            for key in keys:
                shared[key] = shared.get(key, 0) + 1
        apart = [(n, res) for n, res in slow if all(shared[k] == 1 for k in slow_keys[n])]
        together = [(n, res) for n, res in slow if any(shared[k] > 1 for k in slow_keys[n])]
        pool = self._pool
        if pool is not None and len(apart) > 1:
            for (n, _), result in zip(apart, pool.map(lambda r: self._one(*r), apart), strict=True):
                results[n] = result
        else:
            together = sorted(apart + together, key=lambda r: r[0])
        for n, res in together:
            results[n] = self._one(n, res)
        return [results[n] for n in batch.rows], held

    def _one(self, n: int, res: dict[str, Any]) -> RowResult:
        try:
            return self._write_one(n, res)
        except FhirError as err:
            return _rejected(n, err)
        finally:
            self.hooks.release()  # nothing may outlive the row

    def _write_new(self, rows: list[tuple[int, dict[str, Any], list[str]]],
                   results: dict[int, RowResult]) -> tuple[list[tuple[int, dict[str, Any]]], float]:
        """Steps 2-5 of process_batch for rows whose identifiers no other row of the batch has; returns the
        rows left to the one-row path and how long the leases were held."""
        leases = self.svc.leases
        started = time.monotonic()
        token, busy = leases.hold_many(["mpi|" + k for _, _, keys in rows for k in keys])
        slow: list[tuple[int, dict[str, Any]]] = []
        try:
            mine = []
            for n, res, keys in rows:
                if any("mpi|" + k in busy for k in keys):
                    slow.append((n, res))
                else:
                    mine.append((n, res, keys))
            pids = {n: new_id() for n, _, _ in mine}
            taken = self.index.claim_new_many({k: pids[n] for n, _, keys in mine for k in keys})
            fresh: list[tuple[int, dict[str, Any], list[str]]] = []
            drop: list[str] = []
            for n, res, keys in mine:
                if taken.intersection(keys):
                    slow.append((n, res))
                    drop += [k for k in keys if k not in taken]
                else:
                    fresh.append((n, res, keys))
            self.index.drop_fresh_claims(drop)
            names: dict[str, list[str]] = {}
            items = []
            for n, res, keys in fresh:
                extra = {"allow_legacy": True, BATCH_CLAIMED: (pids[n], set(keys)), BATCH_NAMES: names}
                items.append((res, WriteContext(province=self.province, client_id="ehc-import", extra=extra)))
            cards = self._cards()
            with cards.batched() if cards is not None else nullcontext():
                stored = self.svc.repo.create_many("Patient", items)
                self.index.add_names_many(names)
            refused: list[str] = []
            for (n, res, keys), out in zip(fresh, stored, strict=True):
                if isinstance(out, FhirError):
                    slow.append((n, res))
                    refused += keys
                else:
                    outcome = "created" if out.vid == 1 else "linked"
                    results[n] = RowResult(n, outcome, out.id, _card(out.resource or {}))
            self.index.drop_fresh_claims(refused)
        finally:
            leases.release_many(token)
        return slow, time.monotonic() - started

    def _cards(self) -> Any:
        service = self.svc.extensions.get("ehc")
        cards = getattr(service, "cards", None)
        return cards if cards is not None and hasattr(cards, "batched") else None

    def _existing(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        """The registered resident holding every identifier of the row, or None when something is new or
        conflicting (the write path decides then). One claim read per identifier up to the first unclaimed one
        (a new resident costs one read) and one Patient read: a rerun's rows cost no more."""
        entries = self.index.entries(resource)
        pids = set()
        for entry in entries:
            claim = self.index.claims.find_one({"_id": entry.key})
            if claim is None:
                return None
            pids.add(claim["p"])
        if not pids:
            return None
        docs = [self.index.resolve(pid) for pid in sorted(pids)]  # claims of a merged record lead to its target
        if any(doc is None for doc in docs) or len({doc["_id"] for doc in docs if doc is not None}) != 1:
            return None
        return docs[0]["res"] if docs[0] is not None else None

    def run(self, path: Path, report: Path, progress: bool = True, workers: int = 1,
            encoding: str = "utf-8") -> dict[str, int]:
        """Import a file, writing one report row per input row; returns the count per outcome."""
        from tqdm import tqdm

        check_header(path, encoding)  # before the progress bar and the report exist
        counts = {"created": 0, "linked": 0, "unchanged": 0, "rejected": 0}
        bar = tqdm(total=count_rows(path, encoding), unit="row", disable=not progress, mininterval=0.5, smoothing=0.1,
                   dynamic_ncols=True, desc="ehc import")
        stopped: list[ValueError] = []
        with open(report, "w", encoding="utf-8", newline="") as out:
            write = _report_writer(out, report)
            rows = _until_unreadable(read_rows(path, self.registry, encoding), stopped)
            for result in self._results(rows, workers):
                counts[result.outcome] += 1
                write(result)
                bar.update(1)
        bar.close()
        # Posting lists that grew past a segment are rolled by background threads: let them finish before the
        # command closes the database (a batch adds many ids to a common name's list at once).
        self.index.name_lists.roller.wait()
        self.svc.repo.keys.roller.wait()
        if stopped:  # the file cannot be read further: the rows read before are written and reported
            raise stopped[0]
        return counts

    def _results(self, rows: Iterator[tuple[int, Any]], workers: int) -> Iterator[RowResult]:
        if self.batch_size > 1:
            yield from self._pipelined(rows, workers)
            return
        if workers <= 1:
            for n, item in rows:
                yield self.process(n, item)
            return
        # A bounded window of rows in flight keeps memory flat and the report in input order.
        window: list[Future[RowResult]] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ehc-import") as pool:
            for n, item in rows:
                window.append(pool.submit(self.process, n, item))
                if len(window) >= workers * 4:
                    yield window.pop(0).result()
            for fut in window:
                yield fut.result()

    def _pipelined(self, rows: Iterator[tuple[int, Any]], workers: int) -> Iterator[RowResult]:
        """Batches written by two threads at once, so that one batch's Python work (index values, encryption,
        events) runs while the database writes the other's: about 1.2 ms of CPU a new row split about evenly
        between the importer and the database, which two cores can do side by side. A batch sharing an
        identifier with a batch still being written waits for it, so the rows keep the outcome they get one
        after the other (the earlier row creates, the later links); results come out in input order."""
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ehc-import") if workers > 1 else None
        self._pool = pool
        writers = ThreadPoolExecutor(max_workers=PIPELINE, thread_name_prefix="ehc-import-batch")
        inflight: deque[tuple[Future[tuple[list[RowResult], float]], set[str]]] = deque()
        size = self.batch_size

        def finish() -> list[RowResult]:
            nonlocal size
            future, _ = inflight.popleft()
            results, held = future.result()
            if held > BATCH_SECONDS:  # keep batches well inside the leases' time
                size = max(MIN_BATCH, size // 2)
            return results

        try:
            batch: list[tuple[int, Any]] = []
            for n, item in rows:
                batch.append((n, item))
                if len(batch) < size:
                    continue
                prepared = self.prepare_batch(batch)
                batch = []
                while inflight and (len(inflight) >= PIPELINE or any(prepared.keys & k for _, k in inflight)):
                    yield from finish()
                inflight.append((writers.submit(self.write_batch, prepared), prepared.keys))
            while inflight:
                yield from finish()
            if batch:
                yield from self.write_batch(self.prepare_batch(batch))[0]
        finally:
            for future, _ in inflight:
                future.cancel()
            writers.shutdown()
            self._pool = None
            if pool is not None:
                pool.shutdown()


@dataclass
class PreparedBatch:
    """A batch after step 1 of Importer.process_batch: `rows` the input row numbers in order, `results` the
    rows answered already (rejected), `fast` the rows to write together with their identifier keys, `slow`
    those for the one-row path, `keys` every identifier key of the batch (what a concurrent batch must not
    share)."""

    rows: list[int]
    results: dict[int, RowResult]
    fast: list[tuple[int, dict[str, Any], list[str]]]
    slow: list[tuple[int, dict[str, Any]]]
    keys: set[str]


def _until_unreadable(rows: Iterator[tuple[int, Any]], stopped: list[ValueError]
                      ) -> Iterator[tuple[int, Any]]:
    """The rows until the file cannot be read further (bytes that do not decode, a CSV quote that is not
    closed): the error is kept in `stopped` and the rows end there, so the rows read before it are written and
    reported before the run stops with it."""
    try:
        yield from rows
    except ValueError as exc:
        stopped.append(exc)


def _plain_identifiers(res: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(system, value) of every identifier with both, sorted and without repeats."""
    out = {(i["system"], i["value"]) for i in (res or {}).get("identifier") or []
           if isinstance(i, dict) and isinstance(i.get("system"), str) and i["system"]
           and isinstance(i.get("value"), str) and i["value"]}
    return sorted(out)


def _shown(idents: list[tuple[str, str]]) -> str:
    return ", ".join(f"{system}|{value}" for system, value in idents)


def _rejected(n: int, err: FhirError) -> RowResult:
    where = ", ".join(e for i in err.issues for e in i.expression)
    reason = "; ".join(i.diagnostics for i in err.issues)
    return RowResult(n, "rejected", reason=f"{err.status} {reason}" + (f" ({where})" if where else ""))


def _card(resource: dict[str, Any]) -> str:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == EHC_SYSTEM and ident.get("use") != "old":
            return str(ident.get("value") or "")
    return ""


def _report_writer(out: IO[str], report: Path) -> Callable[[RowResult], None]:
    if report.suffix.lower() == ".csv":
        writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS)
        writer.writeheader()

        def write_csv(r: RowResult) -> None:
            writer.writerow(asdict(r))

        return write_csv

    def write_ndjson(r: RowResult) -> None:
        out.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")

    return write_ndjson
