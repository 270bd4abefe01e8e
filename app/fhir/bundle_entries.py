"""What each entry of a batch or transaction Bundle asks for, read and checked before any entry runs.

One reader for both kinds (http.html#transaction): the JSON type of everything the processing reads, the
method, the URL (one parser: relative to the base, or absolute under this server's base; never the base itself),
the body of a PATCH. Any problem refuses the whole Bundle with 400 naming the element
(`Bundle.entry[3].request.url`), so a refused Bundle runs nothing. A transaction also holds each entry to the one
shape its method has (`transaction_target`); a batch routes its entries as single requests are routed.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from app.core import fhirjson
from app.core.errors import FhirError, bad_request
from app.core.ids import is_valid_id
from app.fhir.http import check_json_depth
from app.fhir.router import FhirRequest

# R4 Bundle.entry.request.method is GET | HEAD | POST | PUT | DELETE | PATCH. HEAD is refused rather than run as a
# GET without its body: a HEAD entry asks for nothing a GET entry does not give, and one rule for batch and
# transaction is simpler than a method that only some routes know.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PATCH_MEDIA = ("application/json-patch+json", "application/json")


def check_bundle_entries(bundle: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Bundle.entry, each an object whose fields have the JSON type the processing reads (else 400 naming it),
    at most `limit` of them (else 413)."""
    if "entry" not in bundle:
        return []
    entries = bundle["entry"]
    if not isinstance(entries, list):  # null and {} included: not an empty Bundle, a malformed one
        raise bad_request("Bundle.entry must be a list of entries", expression="Bundle.entry")
    if len(entries) > limit:  # one request must not hold a worker for the work of thousands
        raise FhirError(413, f"a Bundle may hold at most {limit} entries (EHC_MAX_BUNDLE_ENTRIES); this one holds "
                             f"{len(entries)}: send it in parts", code="too-costly", expression="Bundle.entry")
    for i, entry in enumerate(entries):
        _check_entry(entry, f"Bundle.entry[{i}]")
    return entries


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict) or not entry:
        raise bad_request(f"{where} must be an entry (an object with a request)", expression=where)
    request = entry.get("request")
    if not isinstance(request, dict):
        raise bad_request(f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url",
                          expression=f"{where}.request")
    method = request.get("method")
    if method == "HEAD":
        raise bad_request(f"{where}.request.method: HEAD is not supported in a batch or transaction; use GET",
                          expression=f"{where}.request.method", code="not-supported")
    if not isinstance(method, str) or method not in METHODS:
        raise bad_request(f"{where}.request.method must be one of {', '.join(METHODS)}",
                          expression=f"{where}.request.method")
    if not isinstance(request.get("url"), str) or not request["url"].strip():
        raise bad_request(f"{where}.request.url must be the URL of the entry's request",
                          expression=f"{where}.request.url")
    for field in ("ifMatch", "ifNoneMatch", "ifNoneExist", "ifModifiedSince"):
        if not isinstance(request.get(field, ""), str):
            raise bad_request(f"{where}.request.{field} must be a string", expression=f"{where}.request.{field}")
    full_url = entry.get("fullUrl", "")
    if not isinstance(full_url, str):
        raise bad_request(f"{where}.fullUrl must be a string", expression=f"{where}.fullUrl")
    if full_url and not urlsplit(full_url).scheme:
        # R4 Bundle.entry.fullUrl is absolute (a urn:uuid, or the resource's URL). A relative one would make the
        # transaction rewrite every literal reference that happens to read the same ("Observation/abc").
        raise bad_request(f"{where}.fullUrl must be an absolute URL (urn:uuid:... or http...), not {full_url!r}",
                          expression=f"{where}.fullUrl")
    if full_url.lower().startswith("urn:uuid:") and not _is_uuid(full_url[len("urn:uuid:"):]):
        raise bad_request(f"{where}.fullUrl {full_url!r}: a urn:uuid holds a UUID (RFC 4122), such as "
                          "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", expression=f"{where}.fullUrl")
    if not isinstance(entry.get("resource", {}), dict):
        raise bad_request(f"{where}.resource must be a resource (a JSON object)", expression=f"{where}.resource")


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()  # the canonical 8-4-4-4-12 form, not "{...}" or bare hex
    except ValueError:
        return False


@dataclass
class EntryUrl:
    path: str  # relative to the base, segments joined by "/", no leading or trailing slash
    params: list[tuple[str, str]]

    @property
    def segments(self) -> list[str]:
        return self.path.split("/") if self.path else []


def parse_entry_url(req: FhirRequest, url: str, where: str) -> EntryUrl:
    """The one parser of an entry's request.url, for batch and transaction: relative to the base, or absolute
    under this server's base. The base URL itself is refused: an entry there would be a batch or transaction
    inside a batch, run recursively with none of the limits of one Bundle."""
    text = url.strip()
    expression = f"{where}.request.url"
    base = req.base.rstrip("/")
    if urlsplit(text).scheme:
        if not base or not (text == base or text.startswith((base + "/", base + "?"))):
            raise bad_request(f"{expression}: {url!r} is not a URL of this server (its base is {base or '?'}); "
                              "write it relative to the base (Patient/123)", expression=expression)
        text = text[len(base):]
    parts = urlsplit(text)
    if parts.scheme or parts.netloc:  # "//host/..." after the base
        raise bad_request(f"{expression}: {url!r} is not a URL relative to the base", expression=expression)
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise bad_request(f"{expression}: {url!r} addresses the base URL; a Bundle entry cannot hold another "
                          "batch or transaction", expression=expression, code="not-supported")
    return EntryUrl("/".join(segments), parse_qsl(parts.query, keep_blank_values=True))


def entry_request(req: FhirRequest, entry: dict[str, Any], i: int) -> FhirRequest:
    """The request an entry stands for, as the router takes it (an entry checked by check_bundle_entries)."""
    where = f"Bundle.entry[{i}]"
    r = entry["request"]
    url = parse_entry_url(req, r["url"], where)
    headers = {}
    for field, header in (("ifMatch", "if-match"), ("ifNoneMatch", "if-none-match"),
                          ("ifNoneExist", "if-none-exist"), ("ifModifiedSince", "if-modified-since")):
        if r.get(field):
            headers[header] = r[field]
    body = entry.get("resource")
    if r["method"] == "PATCH":
        body = _patch_body(body, where)
    elif r["method"] == "POST" and url.path.endswith("_search") and body is None:
        body = {"_form": []}  # a search by POST whose parameters are all in the url (no form in an entry)
    if req.header("prefer") and "prefer" not in headers:
        headers["prefer"] = req.header("prefer") or ""  # Prefer applies to every entry (http.html#transaction)
    return FhirRequest(r["method"], url.path, url.params, headers, body, base=req.base, principal=req.principal,
                       write=req.write, remote_addr=req.remote_addr, in_transaction=True)


def _patch_body(body: Any, where: str) -> dict[str, Any]:
    """A PATCH entry's patch (http.html#transaction): a Binary holding a JSON Patch, or a Parameters holding a
    FHIRPath Patch. Anything else is refused in batch and transaction alike (it is not an empty patch)."""
    rtype = body.get("resourceType") if isinstance(body, dict) else None
    if rtype == "Parameters":
        return {"_fhirpath_patch": body}
    if rtype != "Binary":
        raise bad_request(f"{where}.resource of a PATCH entry must be a Binary holding a JSON Patch or a Parameters "
                          f"holding a FHIRPath Patch, not {rtype or 'nothing'}", expression=f"{where}.resource")
    assert isinstance(body, dict)
    ctype = body.get("contentType")
    if not isinstance(ctype, str) or ctype.split(";")[0].strip().lower() not in PATCH_MEDIA:
        raise bad_request(f"{where}.resource.contentType of a PATCH entry's Binary must be "
                          f"application/json-patch+json, not {ctype!r}", expression=f"{where}.resource.contentType")
    data = body.get("data")
    try:
        if not isinstance(data, str):
            raise TypeError
        patch = fhirjson.loads(base64.b64decode(data, validate=True))  # decimals keep their text
    except (ValueError, TypeError, RecursionError, fhirjson.JsonError):
        raise bad_request(f"{where}.resource.data of a PATCH entry must be a base64-encoded JSON Patch",
                          expression=f"{where}.resource.data") from None
    check_json_depth(patch)
    if not isinstance(patch, list):
        raise bad_request(f"{where}.resource.data must hold a JSON Patch, an array of operations (RFC 6902 §3)",
                          expression=f"{where}.resource.data")
    return {"_patch": patch}


def transaction_target(sub: FhirRequest, entry: dict[str, Any], i: int) -> None:
    """A transaction entry's URL has the one shape its method has (http.html#transaction), else 400 naming it:
    POST [type]; PUT, PATCH, DELETE [type]/[id] or [type]?criteria; GET anything a GET may read. A POST to an
    operation or to _search, an id in a POST, a version or extra segments in a write: not a transaction's entry
    (a batch routes them as single requests)."""
    where = f"Bundle.entry[{i}].request.url"
    segments = sub.path.split("/")
    if sub.method == "GET":
        return
    rtype = segments[0]
    if not rtype[:1].isupper() or not rtype.isalnum():
        raise bad_request(f"{where}: a transaction's {sub.method} entry names a resource type first, not "
                          f"{rtype!r} (operations and searches belong in a batch)", expression=where)
    if sub.method == "POST":
        if len(segments) != 1:
            raise bad_request(f"{where}: a transaction's POST entry creates a resource: its url is the type alone "
                              f"({rtype}), not {sub.path!r} (an id is assigned by the server; operations and "
                              "_search belong in a batch)", expression=where)
        return
    if len(segments) == 1:
        if not sub.params:
            raise bad_request(f"{where}: a {sub.method} entry needs an id ({rtype}/[id]) or search criteria "
                              f"({rtype}?...)", expression=where)
        return
    rid = segments[1]
    if len(segments) != 2 or not is_valid_id(rid):
        raise bad_request(f"{where}: a {sub.method} entry's url is {rtype}/[id] with a valid id, not {sub.path!r}",
                          expression=where)
    if sub.method == "PUT":
        body_id = (entry.get("resource") or {}).get("id")
        if body_id is not None and body_id != rid:
            raise bad_request(f"{where}: the resource id {body_id!r} differs from the url's id {rid!r}",
                              expression=[where, f"Bundle.entry[{i}].resource.id"])
