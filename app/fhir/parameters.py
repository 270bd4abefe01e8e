"""Reading a Parameters resource (FHIR R4 parameters.html): the body of a POSTed $operation and of a FHIRPath Patch.

One reader, so that every operation answers a malformed body the same way: 400 with an OperationOutcome whose
expression names the element (`Parameters.parameter[1].valueInteger`), never a traceback. The shape is checked
when the body is read (`parameter` a list of objects, each with a name); each accessor checks the JSON type of
the value it reads, so a handler only ever sees a str, an int, a bool or an object where it asked for one.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import bad_request

# value[x] kinds whose JSON form is a string (json.html). Booleans and numbers are checked apart; every other
# value[x] (Reference, Identifier, ...) and a `resource` is an object.
_STRING_KINDS = frozenset(f"value{t}" for t in (
    "String Code Uri Url Canonical Id Oid Uuid Markdown Base64Binary Date DateTime Instant Time".split()))
_INTEGER_KINDS = frozenset(("valueInteger", "valuePositiveInt", "valueUnsignedInt"))


class Parameters:
    """The parameters of a Parameters resource (or the parts of one parameter), in order, by name."""

    def __init__(self, entries: list[dict[str, Any]], path: str) -> None:
        self.entries = entries
        self.path = path  # "Parameters.parameter", or "Parameters.parameter[0].part" for parts

    def named(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """Every parameter of that name, with its path."""
        return [(f"{self.path}[{i}]", p) for i, p in enumerate(self.entries) if p["name"] == name]

    def value(self, name: str, *kinds: str) -> Any:
        """The value of the first parameter `name`, given as one of `kinds` ("valueString", "resource", ...);
        None when there is no such parameter. 400 naming the element when it is there in another form."""
        for where, p in self.named(name)[:1]:
            return _value_of(name, where, p, kinds)
        return None

    def values(self, name: str, *kinds: str) -> list[Any]:
        """The values of every parameter `name` (one that repeats), in order, each read as `value` reads one."""
        return [_value_of(name, where, p, kinds) for where, p in self.named(name)]

    def parts(self, name: str) -> list[Parameters]:
        """The parts of every parameter `name` (a FHIRPath Patch's operations), each read like a body."""
        return [_read(p.get("part", []), f"{where}.part") for where, p in self.named(name)]


def read_parameters(body: Any, what: str, *, required: bool = True) -> Parameters:
    """The parameters of a request body that must be a Parameters resource (`what` names the operation in the
    message). Without `required`, no body at all reads as no parameters."""
    if not body and not required:
        return Parameters([], "Parameters.parameter")
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request(f"{what} needs a Parameters resource as its body", expression="Parameters")
    return _read(body.get("parameter", []), "Parameters.parameter")


def _read(entries: Any, path: str) -> Parameters:
    if not isinstance(entries, list):
        raise bad_request(f"{path} must be a list", expression=path)
    for i, p in enumerate(entries):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise bad_request(f"{path}[{i}] must be an object with a name", expression=f"{path}[{i}].name")
    return Parameters(entries, path)


def _value_of(name: str, where: str, p: dict[str, Any], kinds: tuple[str, ...]) -> Any:
    for kind in kinds:
        if kind in p:
            return _checked(p[kind], kind, f"{where}.{kind}")
    raise bad_request(f"the parameter {name!r} must be given as {' or '.join(kinds)}", expression=where)


def _checked(value: Any, kind: str, where: str) -> Any:
    if kind == "valueBoolean":
        ok, expected = isinstance(value, bool), "true or false"
    elif kind in _INTEGER_KINDS:
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind == "valueDecimal":
        ok, expected = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif kind in _STRING_KINDS:
        ok, expected = isinstance(value, str) and value != "", "a non-empty string"
    else:  # a complex type, or a resource
        ok, expected = isinstance(value, dict), "an object"
    if not ok:
        raise bad_request(f"{where} must be {expected}", expression=where)
    return value
