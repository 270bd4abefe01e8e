"""FHIR R4 XML (xml.html) to and from the JSON form the server works with.

The element order, which elements repeat, which are primitives and which are XML attributes all come from
the StructureDefinition table (app.fhir.structure). The rules:

- the root element is the resource type in the namespace http://hl7.org/fhir;
- a primitive is an element with a `value` attribute; its JSON `_name` twin (id, extension) becomes the
  element's `id` attribute and `extension` children; in a repeating primitive, null placeholders line up;
- Element.id and Extension.url are attributes; Resource.id is an element;
- the narrative div is XHTML in its own namespace, embedded as it is;
- a resource inside another (contained, Bundle.entry.resource, Parameters.parameter.resource) sits in a
  container element named after the resource type;
- decimals keep their text in both directions (app.core.fhirjson.FhirDecimal); a decimal or integer value
  attribute must have its type's lexical form (the definitions' regex: no `.5`, `+1`, `007`, spaces or
  non-ASCII digits);
- attributes in another namespace are not FHIR's (`x:value` is unknown), except `xsi:schemaLocation` on the
  root element, which is ignored.

Reading refuses DOCTYPEs and entity declarations (no XXE, no entity expansion), unknown elements and
malformed values with a FhirError naming the path. No Flask here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from app.core.errors import FhirError
from app.core.fhirjson import FhirDecimal
from app.fhir.structure import ElementDef, Primitive, Structure, TypeDef

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XSI_SCHEMA_LOCATION = "http://www.w3.org/2001/XMLSchema-instance schemaLocation"
MAX_DEPTH = 100  # as for JSON bodies: far beyond any real resource, and no recursion runs away
# Characters XML 1.0 cannot hold, even escaped: stored resources never have them (the validator refuses them), but
# an error can quote a request's (an id or a parameter name with %01 in it). They are written as U+FFFD.
_NOT_XML = {c: "\ufffd" for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0xD800, 0xE000), 0xFFFE, 0xFFFF]}
_ATTR_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                              "\r": "&#13;", "\t": "&#9;", **_NOT_XML})
_TEXT_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **_NOT_XML})


def _attr(value: str) -> str:
    return value.translate(_ATTR_ESCAPE)


def _primitive_text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, FhirDecimal):
        return value.text
    if isinstance(value, float):
        return repr(value)
    return str(value)


# -- JSON -> XML --------------------------------------------------------------------------------------


class XmlWriter:
    def __init__(self, structure: Structure, pretty: bool = False) -> None:
        self.s = structure
        self.pretty = pretty

    def resource(self, res: dict[str, Any]) -> bytes:
        out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>']
        if self.pretty:
            out.append("\n")
        self._resource(res, out, 0, root=True)
        return "".join(out).encode("utf-8")

    def _nl(self, out: list[str], depth: int) -> None:
        if self.pretty:
            out.append("\n" + "  " * depth)

    def _resource(self, res: dict[str, Any], out: list[str], depth: int, root: bool = False) -> None:
        rtype = res.get("resourceType")
        tdef = self.s.types.get(rtype) if isinstance(rtype, str) else None
        if tdef is None:
            raise FhirError(500, f"cannot write {rtype!r} as XML: not a resource type")
        out.append(f'<{rtype} xmlns="{FHIR_NS}">')
        self._children(res, tdef, out, depth + 1)
        self._nl(out, depth)
        out.append(f"</{rtype}>")

    def _children(self, obj: dict[str, Any], tdef: TypeDef, out: list[str], depth: int) -> None:
        for name in tdef.order:
            el = tdef.elements[name]
            if el.attr:
                continue
            value = obj.get(name)
            ext = obj.get("_" + name)
            if value is None and ext is None:
                continue
            if el.many:
                values = value if isinstance(value, list) else [value] if value is not None else []
                exts = ext if isinstance(ext, list) else [ext] if ext is not None else []
                for i in range(max(len(values), len(exts))):
                    self._element(el, values[i] if i < len(values) else None,
                                  exts[i] if i < len(exts) else None, out, depth)
            else:
                self._element(el, value, ext, out, depth)

    def _element(self, el: ElementDef, value: Any, ext: Any, out: list[str], depth: int) -> None:
        if value is None and ext is None:
            return
        self._nl(out, depth)
        t = el.type
        if t == "xhtml":
            out.append(str(value))
            return
        if self.s.is_primitive(t):
            attrs = ""
            if isinstance(ext, dict) and isinstance(ext.get("id"), str):
                attrs += f' id="{_attr(ext["id"])}"'
            if value is not None:
                attrs += f' value="{_attr(_primitive_text(value))}"'
            extensions = ext.get("extension") if isinstance(ext, dict) else None
            if extensions:
                out.append(f"<{el.name}{attrs}>")
                for e in extensions:
                    self._element(self.s.types["Element"].elements["extension"], e, None, out, depth + 1)
                self._nl(out, depth)
                out.append(f"</{el.name}>")
            else:
                out.append(f"<{el.name}{attrs}/>")
            return
        if t == "Resource":
            out.append(f"<{el.name}>")
            self._nl(out, depth + 1)
            self._resource(value, out, depth + 1)
            self._nl(out, depth)
            out.append(f"</{el.name}>")
            return
        tdef = self.s.types[t]
        attrs = ""
        for aname in ("id", "url"):
            ael = tdef.elements.get(aname)
            if ael is not None and ael.attr and isinstance(value.get(aname), str):
                attrs += f' {aname}="{_attr(value[aname])}"'
        out.append(f"<{el.name}{attrs}>")
        self._children(value, tdef, out, depth + 1)
        self._nl(out, depth)
        out.append(f"</{el.name}>")


def to_xml(structure: Structure, resource: dict[str, Any], pretty: bool = False) -> bytes:
    return XmlWriter(structure, pretty).resource(resource)


# -- XML -> JSON --------------------------------------------------------------------------------------


@dataclass
class _Node:
    ns: str
    name: str
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    xhtml: str | None = None  # the serialised div


class _Builder:
    """An expat tree builder that keeps each XHTML div as text and refuses DOCTYPE and entities."""

    def __init__(self) -> None:
        self.stack: list[_Node] = []
        self.root: _Node | None = None
        self.div_depth = 0
        self.div_parts: list[str] = []
        self.ns_stack: list[str] = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        if self.div_depth:
            self.div_depth += 1
            self.div_parts.append(self._open(local, attrs, ns))
            return
        if ns == XHTML_NS and local == "div":
            self.div_depth = 1
            self.div_parts = [self._open(local, attrs, ns, root=True)]
            node = _Node(ns, local, {})
            if self.stack:
                self.stack[-1].children.append(node)
            self.stack.append(node)
            return
        if len(self.stack) >= MAX_DEPTH:
            raise _Malformed(f"the XML is nested more than {MAX_DEPTH} levels deep (the limit)")
        node = _Node(ns, local, {_attr_name(k): v for k, v in attrs.items()
                                 if self.stack or k != XSI_SCHEMA_LOCATION})
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    @staticmethod
    def _open(local: str, attrs: dict[str, str], ns: str, root: bool = False) -> str:
        parts = [f"<{local}"]
        if root:
            parts.append(f' xmlns="{XHTML_NS}"')
        elif ns != XHTML_NS:
            raise _Malformed(f"<{local}> inside the narrative is not XHTML")
        for k, v in attrs.items():
            kns, _, kl = k.rpartition(" ")
            key = f"xml:{kl}" if kns == "http://www.w3.org/XML/1998/namespace" else kl
            parts.append(f' {key}="{v.translate(_ATTR_ESCAPE)}"')
        return "".join(parts) + ">"

    def end(self, name: str) -> None:
        if self.div_depth:
            local = name.rpartition(" ")[2]
            self.div_depth -= 1
            last = self.div_parts[-1]
            if last.endswith(">") and last.startswith(f"<{local}") and not last.endswith("/>") \
                    and last.count("<") == 1:
                self.div_parts[-1] = last[:-1] + "/>"  # an empty element, written short
            else:
                self.div_parts.append(f"</{local}>")
            if self.div_depth == 0:
                self.stack[-1].xhtml = "".join(self.div_parts)
                self.stack.pop()
            return
        self.stack.pop()

    def chars(self, data: str) -> None:
        if self.div_depth:
            self.div_parts.append(data.translate(_TEXT_ESCAPE))
        elif self.stack and data.strip():
            self.stack[-1].text.append(data)


def _attr_name(key: str) -> str:
    """An attribute's name: `value` without a namespace, `{urn:x}value` in one (so never taken for FHIR's)."""
    ns, _, local = key.rpartition(" ")
    return f"{{{ns}}}{local}" if ns else local


class _Malformed(Exception):
    pass


def _refuse(*_args: Any) -> None:
    raise _Malformed("DOCTYPE, entity declarations and processing instructions are not accepted")


def parse_xml(data: bytes) -> _Node:
    b = _Builder()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = b.start
    parser.EndElementHandler = b.end
    parser.CharacterDataHandler = b.chars
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ProcessingInstructionHandler = _refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except _Malformed as err:
        raise FhirError(400, f"the XML body is not accepted: {err}", code="structure") from None
    except expat.ExpatError as err:
        raise FhirError(400, f"the body is not well-formed XML: {expat.errors.messages[err.code]} "
                        f"(line {err.lineno}, column {err.offset})", code="structure") from None
    if b.root is None:
        raise FhirError(400, "the XML body has no root element", code="structure")
    return b.root


class XmlReader:
    def __init__(self, structure: Structure) -> None:
        self.s = structure

    def resource(self, node: _Node, path: str = "") -> dict[str, Any]:
        if node.ns != FHIR_NS:
            raise _bad(path or node.name, f"<{node.name}> is not in the FHIR namespace {FHIR_NS}")
        if node.name not in self.s.resources:
            raise _bad(path or node.name, f"<{node.name}> is not a FHIR R4 resource type")
        out: dict[str, Any] = {"resourceType": node.name}
        self._children(node, self.s.types[node.name], out, path or node.name)
        return out

    def _children(self, node: _Node, tdef: TypeDef, out: dict[str, Any], path: str) -> None:
        if node.text:
            raise _bad(path, "text content is not allowed here (FHIR XML puts values in value attributes)")
        for aname, avalue in node.attrs.items():
            el = tdef.elements.get(aname)
            if el is None or not el.attr:
                raise _bad(f"{path}.@{aname}", "unknown attribute")
            out[aname] = avalue
        for child in node.children:
            cpath = f"{path}.{child.name}"
            if child.ns != FHIR_NS and not (child.ns == XHTML_NS and child.name == "div"):
                raise _bad(cpath, f"<{child.name}> is not in the FHIR namespace")
            el = tdef.elements.get(child.name)
            if el is None or el.attr:
                raise _bad(cpath, "unknown element")
            if el.many:  # paths as in JSON: Bundle.entry[0].resource.name[1]
                cpath = f"{cpath}[{len(out.get(el.name) or ())}]"
            value, ext = self._value(child, el, cpath)
            if el.many:
                values = out.setdefault(el.name, [])
                exts = out.get("_" + el.name)
                if ext is not None and exts is None:
                    exts = out["_" + el.name] = [None] * len(values)
                values.append(value)
                if exts is not None:
                    exts.append(ext)
            else:
                if el.name in out or ("_" + el.name) in out:
                    raise _bad(cpath, "the element does not repeat")
                if value is not None:
                    out[el.name] = value
                if ext is not None:
                    out["_" + el.name] = ext
        for name in list(out):
            if isinstance(out[name], list) and name[:1] != "_" and all(v is None for v in out[name]):
                del out[name]  # a repeating primitive that only had extensions

    def _value(self, node: _Node, el: ElementDef, path: str) -> tuple[Any, dict[str, Any] | None]:
        t = el.type
        if t == "xhtml":
            if node.xhtml is None:
                raise _bad(path, f'the narrative must be a <div xmlns="{XHTML_NS}">')
            return node.xhtml, None
        prim = self.s.primitives.get(t)
        if prim is not None:
            ext: dict[str, Any] = {}
            raw = node.attrs.get("value")
            for k, v in node.attrs.items():
                if k == "id":
                    ext["id"] = v
                elif k != "value":
                    raise _bad(f"{path}.@{k}", "unknown attribute")
            if node.text:
                raise _bad(path, "a primitive's value goes in its value attribute, not in text")
            extensions: list[dict[str, Any]] = []
            for child in node.children:
                if child.name != "extension" or child.ns != FHIR_NS:
                    raise _bad(f"{path}.{child.name}", "unknown element")
                extensions.append(self._complex(child, self.s.types["Extension"],
                                                f"{path}.extension[{len(extensions)}]"))
            if extensions:
                ext["extension"] = extensions
            value = None if raw is None else _convert(raw, prim, path)
            if value is None and "extension" not in ext:
                raise _bad(path, "an element needs a value attribute or extensions; an id alone is not one (ele-1)")
            return value, ext or None
        if t == "Resource":
            inner = list(node.children)
            if len(inner) != 1 or node.attrs or node.text:
                raise _bad(path, "a resource container holds exactly one resource")
            return self.resource(inner[0], path), None
        tdef = self.s.types.get(t)
        if tdef is None:
            raise _bad(path, f"type {t} is not known")
        return self._complex(node, tdef, path), None

    def _complex(self, node: _Node, tdef: TypeDef, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self._children(node, tdef, out, path)
        return out


def _convert(raw: str, prim: Primitive, path: str) -> Any:
    kind, t = prim.kind, prim.name
    if kind in ("integer", "decimal") and prim.regex is not None and not prim.regex.fullmatch(raw):
        raise _bad(path, f"{raw!r} is not a valid {t}")
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise _bad(path, f"{raw!r} is not a boolean (true or false)")
        return raw == "true"
    if kind == "integer":
        try:
            return int(raw) if raw.strip() == raw and raw.lstrip("-").isdigit() else int("x")
        except ValueError:
            raise _bad(path, f"{raw!r} is not an {t}") from None
    if kind == "decimal":
        try:
            value = FhirDecimal(raw)
        except ValueError:
            raise _bad(path, f"{raw!r} is not a decimal") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise _bad(path, f"{raw!r} is not a decimal")
        return value
    return raw


def _bad(path: str, msg: str) -> FhirError:
    return FhirError(400, f"{path}: {msg}", code="structure", expression=path)


def from_xml(structure: Structure, data: bytes) -> dict[str, Any]:
    """Parse a FHIR XML resource into its JSON form (FhirError 400 naming the path when it cannot)."""
    return XmlReader(structure).resource(parse_xml(data))
