"""HTTP details of the FHIR RESTful API (http.html): media types, Prefer, ETag, absolute URLs, bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from flask import Request, Response
from gunicorn.http.errors import ParseException
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from app.core import fhirjson
from app.core.errors import FhirError, bad_request
from app.core.timeutil import http_date
from app.fhir import xml as fhir_xml
from app.fhir.structure import load_structure
from app.services import PROFILES_DIR

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
FHIR_XML = "application/fhir+xml"
FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": FHIR_JSON, "application/fhir+json": FHIR_JSON,
                  "xml": FHIR_XML, "text/xml": FHIR_XML, "application/xml": FHIR_XML, FHIR_XML: FHIR_XML}
XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "xml", "application/xml+fhir"}
# What an Accept header may choose among, in the order preferred when its quality values tie (JSON first).
_OFFERED = [FHIR_JSON, "application/json", "application/json+fhir", "text/json", FHIR_XML, "application/xml",
            "text/xml", "application/xml+fhir"]


@dataclass
class FhirResponse:
    """What a handler returns; turned into a Flask Response in one place (to_flask)."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = FHIR_JSON
    raw: bytes | None = None  # Binary content served as itself
    # A create that registered a known resident: what the caller submitted (the disclosure gate answers with
    # the registration view when the caller may not see the whole record).
    registration_of: dict[str, Any] | None = None


def negotiate(request: Request) -> str:
    """The response media type: _format wins over Accept; JSON only (406 otherwise)."""
    fmt = request.args.get("_format")
    if fmt:
        # a media type as Accept would hold it (any case, parameters such as charset or fhirVersion=4.0), or a
        # short name; "+" arrives as a space when not encoded
        media, *params = fmt.strip().replace(" ", "+").split(";")
        version = _fhir_version(params)
        name = media.strip().lower()
        if version is None or _is_r4(version):
            if name in FORMAT_ALIASES:
                return FORMAT_ALIASES[name]
            if name in JSON_TYPES:
                return FHIR_JSON
            if name in XML_TYPES:
                return FHIR_XML
        raise FhirError(406, f"_format={fmt!r} is not a supported format (json, xml)", expression="_format")
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return FHIR_JSON
    # Quality values decide (RFC 9110 §12.5.1): q=0 refuses a type, and the highest q wins, then the order offered.
    # Other parameters are left out of the match; a part asking for another FHIR version is no offer at all.
    kept = []
    for part in accept.split(","):
        media, *params = part.split(";")
        version = _fhir_version(params)
        if version is None or _is_r4(version):
            kept.append(";".join([media, *(p for p in params if p.strip().lower().startswith("q="))]))
    best = parse_accept_header(",".join(kept), MIMEAccept).best_match(_OFFERED)
    if best in XML_TYPES:
        return FHIR_XML
    if best is not None:  # the JSON type answered is the one chosen, so one the client takes (text/* gets text/json)
        return best
    raise FhirError(406, f"cannot answer in any of the accepted media types ({accept}); use application/fhir+json")


def body_bytes(request: Request) -> bytes:
    """The request body (read once, cached). A body the HTTP server cannot read (a malformed chunked encoding,
    a connection closed half way) is the client's error: 400, not a 500 with a traceback."""
    try:
        return request.get_data(cache=True)
    except (ParseException, OSError) as err:
        raise bad_request(f"the request body could not be read: {type(err).__name__}") from None


def check_charset(request: Request) -> None:
    """FHIR's JSON and XML bodies, and JSON Patch documents, are UTF-8 (http.html#mime-type): another charset
    named is refused (415), not read as UTF-8 regardless."""
    charset = (request.mimetype_params.get("charset") or "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        raise FhirError(415, f"Content-Type names charset {charset!r}; FHIR bodies are UTF-8",
                        expression="Content-Type")


def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise FhirError(413, f"the request body is {length} bytes; the limit is {max_bytes}")
    ctype = (request.mimetype or "").lower()
    if ctype and ctype not in JSON_TYPES and ctype not in XML_TYPES:
        raise FhirError(415, f"Content-Type {ctype!r} is not supported; send application/fhir+json or +xml")
    check_charset(request)
    data = body_bytes(request)
    if len(data) > max_bytes:
        raise FhirError(413, f"the request body is larger than {max_bytes} bytes")
    if not data.strip():
        raise bad_request("the request has no body; a FHIR resource was expected")
    if ctype in XML_TYPES:
        return fhir_xml.from_xml(load_structure(PROFILES_DIR), data)
    try:
        body = fhirjson.loads(data)  # decimals keep their text (1.50 stays 1.50)
    except fhirjson.DuplicateKeyError as err:
        raise bad_request(f"the body is refused: {err}") from None
    except fhirjson.JsonError as err:
        raise bad_request(f"the body is not valid JSON: {err}") from None
    except RecursionError:  # the parser gave up on a body nested hundreds of levels deep
        raise too_deep() from None
    check_json_depth(body)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object (a FHIR resource)")
    return body


# How deeply a request body may nest (objects and arrays). A FHIR resource, even a Bundle of Questionnaires
# with nested items, stays far below; anything deeper is refused with 400 before any code walks it
# recursively (validation, indexing, serialising), so it can never cause a RecursionError.
MAX_JSON_DEPTH = 100


def too_deep() -> FhirError:
    return bad_request(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep (the limit)", code="too-costly")


def check_json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """400 when `value` nests objects/arrays deeper than `limit` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise too_deep()
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


def parse_prefer(header: str | None) -> dict[str, str]:
    """Prefer: return=minimal, handling=strict ... as a dict."""
    out: dict[str, str] = {}
    for part in (header or "").replace(";", ",").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip().strip('"').lower()
    return out


def etag(vid: int | str) -> str:
    return f'W/"{vid}"'


def parse_etag(value: str | None, header: str) -> int | None:
    """W/"3" or "3" -> 3."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not (v.isascii() and v.isdigit()):  # ASCII only: "²" and "١" are digits to str.isdigit
        raise bad_request(f'{header} must be a version ETag like W/"3", not {value!r}', expression=header)
    return int(v)


def version_headers(base: str, resource_type: str, rid: str, vid: int, ts: Any) -> dict[str, str]:
    return {
        "ETag": etag(vid),
        "Last-Modified": http_date(ts),
        "Location": f"{base}/{resource_type}/{rid}/_history/{vid}",
    }


def to_flask(resp: FhirResponse, media_type: str, pretty: bool) -> Response:
    if resp.raw is not None:
        out = Response(resp.raw, status=resp.status, content_type=resp.content_type)
    elif resp.body is None:  # no content, so no Content-Type (Flask's default would say text/html)
        out = Response(b"", status=resp.status)
        del out.headers["Content-Type"]
    else:
        structure = load_structure(PROFILES_DIR)
        if media_type == FHIR_XML and resp.body.get("resourceType") not in structure.resources:
            media_type = "application/json"  # not a FHIR resource (the SMART configuration): JSON only
        if media_type == FHIR_XML:
            payload = fhir_xml.to_xml(structure, resp.body, pretty)
        else:
            payload = fhirjson.dumps(resp.body, pretty)
        out = Response(payload, status=resp.status, content_type=f"{media_type}; charset=utf-8")
    for k, v in resp.headers.items():
        out.headers[k] = v
    return out


def _fhir_version(params: list[str]) -> str | None:
    """The `fhirVersion` of a media type's parameters, if it names one."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "fhirversion":
            return value.strip().strip('"')
    return None


def _is_r4(version: str) -> bool:
    return version == "4.0" or version.startswith("4.0.")


def check_fhir_version(request: Request) -> None:
    """A `fhirVersion` media-type parameter other than 4.0 (R4), http.html#version-parameter: 415 when the body's
    Content-Type names one, 406 when every type Accept offers does (one of several offering 4.0 is answered)."""
    content = (request.headers.get("Content-Type") or "").split(";")
    version = _fhir_version(content[1:])
    if version is not None and not _is_r4(version):
        raise FhirError(415, f"this server speaks FHIR 4.0 (R4); Content-Type asks for fhirVersion {version}",
                        code="not-supported", expression="Content-Type")
    offers = [_fhir_version(part.split(";")[1:]) for part in (request.headers.get("Accept") or "").split(",")]
    others = [v for v in offers if v is not None and not _is_r4(v)]
    if others and len(others) == len(offers):
        raise FhirError(406, f"this server speaks FHIR 4.0 (R4); Accept asks for fhirVersion {others[0]}",
                        code="not-supported", expression="Accept")


FHIR_MEDIA = JSON_TYPES | XML_TYPES | {"*/*", "application/*", ""}


def native_binary_type(request: Request, path: str) -> str | None:
    """For a Binary read or write in its own content type (http.html#binary): that type, else None."""
    segs = [x for x in path.strip("/").split("/") if x]
    if not segs or segs[0] != "Binary" or request.args.get("_format"):
        return None
    if request.method in ("POST", "PUT") and len(segs) <= 2:
        ctype = (request.mimetype or "").lower()
        return ctype if ctype and ctype not in FHIR_MEDIA else None
    if request.method in ("GET", "HEAD") and len(segs) in (2, 4):
        first = most_wanted(request.headers.get("Accept"))
        return first if first not in FHIR_MEDIA else None
    return None


def most_wanted(accept: str | None) -> str:
    """The media type an Accept header wants most: by quality value, as negotiate() reads it ("" for none)."""
    wanted = [media for media, q in parse_accept_header(accept or "", MIMEAccept) if q > 0]  # werkzeug orders them
    return wanted[0].lower() if wanted else ""


def accepts(accept: str | None, media: str) -> bool:
    """Whether an Accept header takes `media` (wildcards included, q=0 excluded)."""
    return parse_accept_header(accept or "", MIMEAccept).best_match([media]) is not None


def query_params(request: Request) -> list[tuple[str, str]]:
    """The query parameters, also when a client sent raw UTF-8 (curl does for `?name=张伟`): WSGI hands the
    query string over as Latin-1 (PEP 3333), so its bytes are taken back and read as UTF-8."""
    raw = request.environ.get("QUERY_STRING", "")
    if raw.isascii():
        return list(request.args.items(multi=True))
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise bad_request("the query string is neither percent-encoded nor UTF-8 (percent-encode it, e.g. "
                          "curl -G --data-urlencode 'name=张伟')", expression="query") from None
    try:  # werkzeug's own development server hands raw bytes over encoded twice
        text = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass  # read once is right
    return parse_qsl(text, keep_blank_values=True)
