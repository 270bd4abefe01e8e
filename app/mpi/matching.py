"""Patient matching: the scorer behind Patient/$match (IHE PDQm, FHIR R4 Patient-match), pure.

score(query, candidate) compares two Patient resources and grades the pair as FHIR's match-grade does:

1. Documents decide first. Identifiers are normalised through the IdentifierRegistry (legacy 15-digit ID
   numbers included). The same value in a master system (NamingSystem `master`), a server-issued system (the
   electronic health card ID maps 1:1 to the master index) or the same person number in any system that
   carries one (the resident ID number also sits in the household register, driving licence and social
   security card) makes the pair 'certain', score 1.0, unless something contradicts.
   A different number in the same *lifelong* system (NamingSystem `lifelong`: resident ID card, permits)
   makes it 'certainly-not', score 0.0; so do a birth date or gender that contradict (both full dates and
   different; male against female). A passport or other renewable document that differs only lowers the
   score. Document agreement with a contradicting birth date or gender is graded 'possible' (score 0.5) so
   a person reviews it; with an unrelated name it is 'probable' (0.85).
2. Otherwise a weighted sum, each part in [0, 1] times its weight, absent data contributing nothing:

   | part       | weight | how it is compared                                                         |
   |------------|--------|----------------------------------------------------------------------------|
   | name       | 0.30   | same characters 1.0; Latin pinyin of the same name 0.95 (either order);    |
   |            |        | different characters with the same toneless pinyin (张伟/章伟) 0.85;       |
   |            |        | fuzzy pinyin (zh/z ch/c sh/s n/l f/h -ng/-n) 0.7; same initials 0.3;      |
   |            |        | otherwise 0.6 x string similarity of the pinyin when it is at least 0.75   |
   | birthDate  | 0.25   | same date 1.0; same year-month when one side has only that 0.8; year 0.4   |
   | gender     | 0.10   | male/female equal 1.0                                                      |
   | phone      | 0.20   | any telecom phone whose last 8 digits agree (digits only) 1.0             |
   | address    | 0.15   | city 0.25 + district 0.25 + line 0.5 (common prefix over the shorter), or  |
   |            |        | the common prefix of the whole address text when that is higher           |
   | other ids  | +0.30  | the same value in any other identifier system (hospital record number,     |
   |            |        | insurance code ...); -0.10 when a renewable or non-master document differs |
   | no name    | -0.20  | both sides have names and nothing of them agrees                           |

   The sum is capped at 0.95 (only documents make 'certain'): >= 0.80 'probable', >= 0.25 'possible',
   below that 'certainly-not'.

name_keys(patient) gives the normalised pinyin keys of a Patient's names ("zhangwei": lower case, toneless,
no spaces, ü as u; Latin names in both orders; polyphonic surnames in each reading) for candidate lookup.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from typing import Any

from pypinyin import Style, lazy_pinyin, pinyin

from app.mpi.identifiers import IdentifierInvalid, IdentifierRegistry, default_registry

WEIGHTS = {"name": 0.30, "birthDate": 0.25, "gender": 0.10, "phone": 0.20, "address": 0.15}
OTHER_ID_BONUS = 0.30
DIFFERENT_DOCUMENT_PENALTY = 0.10
WEIGHTED_CAP = 0.95
PROBABLE = 0.80
POSSIBLE = 0.25
NAME_MISMATCH_PENALTY = 0.20  # both sides named, nothing in common: Chinese names rarely change
UNRELATED_NAME = 0.30  # below this name similarity, a document agreement is only 'probable'


@dataclass(frozen=True)
class MatchResult:
    score: float  # 0..1
    grade: str  # 'certain' | 'probable' | 'possible' | 'certainly-not'
    reasons: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- names

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NOT_CJK = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_TOKEN = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class _NameForm:
    hanzi: str | None  # the characters, for Chinese names
    keys: tuple[str, ...]  # joined toneless pinyin; keys[0] the name as given (family first where known)
    latin: bool


def _latin(token: str) -> str:
    # NFKD drops tone marks and the umlaut (lǚ -> lu); pypinyin writes ü as v, so v becomes u on both sides.
    plain = unicodedata.normalize("NFKD", token).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z]", "", plain).replace("v", "u")


@lru_cache(maxsize=65536)
def _hanzi_keys(hanzi: str, family_len: int) -> tuple[str, ...]:
    syllables = [_latin(s) for s in lazy_pinyin(hanzi, style=Style.NORMAL)]
    keys = ["".join(syllables)]
    # Surnames read differently from the common reading (单 shan, 曾 zeng, 解 xie): every reading counts.
    if family_len == 1:
        for reading in pinyin(hanzi[0], style=Style.NORMAL, heteronym=True)[0][:4]:
            key = _latin(reading) + "".join(syllables[1:])
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def _latin_orders(tokens: list[str], family_first_known: bool) -> list[list[str]]:
    orders = [tokens]
    if len(tokens) > 1:
        orders.append(tokens[-1:] + tokens[:-1])  # Western order "Wei Zhang" -> zhang wei
        if family_first_known:
            orders.append(tokens[1:] + tokens[:1])
    return orders


def _form(family: str, given: list[str], text: str | None) -> _NameForm | None:
    whole = text if text is not None else family + "".join(given)
    if _CJK.search(whole):
        hanzi = _NOT_CJK.sub("", whole)
        family_len = len(_NOT_CJK.sub("", family)) if text is None and family else 1
        return _NameForm(hanzi, _hanzi_keys(hanzi, family_len), latin=False)
    if text is not None:
        raw = _LATIN_TOKEN.findall(text)
        if "," in text:  # "Zhang, Wei": family before the comma
            head, _, tail = text.partition(",")
            raw = _LATIN_TOKEN.findall(head) + _LATIN_TOKEN.findall(tail)
        # "ZHANG Wei": an all-capital token among mixed-case ones is the family name.
        caps = [t for t in raw if t.isupper() and len(t) > 1]
        if len(caps) == 1 and len(raw) > 1 and any(not t.isupper() for t in raw):
            raw = caps + [t for t in raw if t is not caps[0]]
        tokens, family_known = [_latin(t) for t in raw], "," in text or len(caps) == 1
    else:
        tokens = [_latin(t) for t in _LATIN_TOKEN.findall(family)]
        tokens += [_latin(t) for g in given for t in _LATIN_TOKEN.findall(g)]
        family_known = bool(family)
    tokens = [t for t in tokens if t]
    if not tokens:
        return None
    keys: list[str] = []
    for order in _latin_orders(tokens, family_known):
        key = "".join(order)
        if key not in keys:
            keys.append(key)
    return _NameForm(None, tuple(keys), latin=True)


def _name_forms(patient: dict[str, Any]) -> list[_NameForm]:
    forms: list[_NameForm] = []
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        family = name["family"] if isinstance(name.get("family"), str) else ""
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        candidates: list[_NameForm | None] = []
        if isinstance(name.get("text"), str) and name["text"].strip():
            candidates.append(_form("", [], name["text"]))
        if family or given:
            candidates.append(_form(family, given, None))
        forms.extend(f for f in candidates if f is not None)
    return forms


def name_keys(patient: dict[str, Any]) -> list[str]:
    """The normalised pinyin keys of a Patient's names, for indexing candidates (e.g. 张伟 -> "zhangwei")."""
    keys = {key for form in _name_forms(patient) for key in form.keys}
    return sorted(keys)


_FUZZY = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("ng", "n"), ("n", "l"), ("f", "h"))


def _fuzzy(key: str) -> str:
    for old, new in _FUZZY:
        key = key.replace(old, new)
    return key


@lru_cache(maxsize=65536)
def _initials(hanzi: str) -> str:
    return "".join(s[0] for s in lazy_pinyin(hanzi, style=Style.FIRST_LETTER) if s)


def _form_similarity(a: _NameForm, b: _NameForm) -> tuple[float, str]:
    if a.hanzi is not None and a.hanzi == b.hanzi:
        return 1.0, f"name {a.hanzi} agrees"
    shared = set(a.keys) & set(b.keys)
    if shared:
        if a.hanzi is not None and b.hanzi is not None:
            return 0.85, f"names {a.hanzi} / {b.hanzi} share the pinyin {sorted(shared)[0]}"
        if a.latin and b.latin and a.keys[0] == b.keys[0]:
            return 1.0, f"name {a.keys[0]} agrees"
        return 0.95, f"names agree in pinyin ({sorted(shared)[0]})"
    if {_fuzzy(k) for k in a.keys} & {_fuzzy(k) for k in b.keys}:
        return 0.7, "names agree in fuzzy pinyin (zh/z, n/l, -ng/-n ...)"
    if a.hanzi is not None and b.hanzi is not None and len(a.hanzi) > 1 and _initials(a.hanzi) == _initials(
        b.hanzi
    ):
        return 0.3, "names share their pinyin initials"
    ratio = SequenceMatcher(None, a.keys[0], b.keys[0]).ratio()
    if ratio >= 0.75:
        return 0.6 * ratio, f"names are similar in pinyin ({ratio:.2f})"
    return 0.0, ""


def name_similarity(query: dict[str, Any], candidate: dict[str, Any]) -> tuple[float, str] | None:
    """Best similarity over all name pairs, None when either side has no name."""
    qa, ca = _name_forms(query), _name_forms(candidate)
    if not qa or not ca:
        return None
    return max((_form_similarity(a, b) for a in qa for b in ca), key=lambda t: t[0])


# ---------------------------------------------------------------- other demographics

def _birth_date(query: dict[str, Any], candidate: dict[str, Any]) -> tuple[float, bool] | None:
    """(similarity, contradicts) of two FHIR birthDates (YYYY, YYYY-MM or YYYY-MM-DD), None when absent."""
    a, b = query.get("birthDate"), candidate.get("birthDate")
    if not isinstance(a, str) or not isinstance(b, str) or len(a) < 4 or len(b) < 4:
        return None
    a, b = a[:10], b[:10]
    common = min(len(a), len(b))
    if a[:common] != b[:common]:
        return 0.0, True
    return {10: 1.0, 7: 0.8}.get(common, 0.4), False


def _phones(patient: dict[str, Any]) -> set[str]:
    out = set()
    for tel in patient.get("telecom") or []:
        if isinstance(tel, dict) and tel.get("system", "phone") in ("phone", "sms") and isinstance(
            tel.get("value"), str
        ):
            digits = re.sub(r"\D", "", tel["value"])
            if len(digits) >= 7:
                out.add(digits[-8:])
    return out


_ADDRESS_NOISE = re.compile(r"[\s,，.。、#\-()（）]+")


def _clean(text: Any) -> str:
    return _ADDRESS_NOISE.sub("", text).lower() if isinstance(text, str) else ""


def _prefix_ratio(a: str, b: str) -> float:
    if len(a) < 2 or len(b) < 2:
        return 0.0
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n / min(len(a), len(b)) if n >= 2 else 0.0


def _address_pair(a: dict[str, Any], b: dict[str, Any]) -> float:
    line_a, line_b = _clean("".join(a.get("line") or [])), _clean("".join(b.get("line") or []))
    city_a, city_b = _clean(a.get("city")), _clean(b.get("city"))
    dist_a, dist_b = _clean(a.get("district")), _clean(b.get("district"))
    parts = 0.25 * (bool(city_a) and city_a == city_b) + 0.25 * (bool(dist_a) and dist_a == dist_b)
    parts += 0.5 * _prefix_ratio(line_a, line_b)

    def whole(x: dict[str, Any]) -> str:
        if isinstance(x.get("text"), str) and x["text"].strip():
            return _clean(x["text"])
        parts = [_clean(x.get(k)) for k in ("state", "city", "district")]
        return "".join(parts) + _clean("".join(x.get("line") or []))

    return max(parts, _prefix_ratio(whole(a), whole(b)))


def _address(query: dict[str, Any], candidate: dict[str, Any]) -> float | None:
    qa = [a for a in query.get("address") or [] if isinstance(a, dict)]
    ca = [a for a in candidate.get("address") or [] if isinstance(a, dict)]
    if not qa or not ca:
        return None
    return max(_address_pair(a, b) for a in qa for b in ca)


# ---------------------------------------------------------------- identifiers

@dataclass
class _Ids:
    by_system: dict[str, set[str]] = field(default_factory=dict)
    person_numbers: set[str] = field(default_factory=set)  # numbers that carry a birth date and sex


def _identifiers(patient: dict[str, Any], registry: IdentifierRegistry) -> _Ids:
    out = _Ids()
    for ident in patient.get("identifier") or []:
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not value.strip():
            continue
        try:
            norm = registry.validate(system, value, allow_legacy=True)
            value = norm.value
            if norm.birth_date is not None and norm.sex is not None:
                out.person_numbers.add(value)
        except IdentifierInvalid:
            value = value.strip()  # still comparable as written
        out.by_system.setdefault(system, set()).add(value)
    return out


# ---------------------------------------------------------------- the score

def score(
    query: dict[str, Any], candidate: dict[str, Any], *, registry: IdentifierRegistry | None = None
) -> MatchResult:
    """Score how likely candidate is the person query describes (both Patient resources)."""
    registry = registry or default_registry()
    reasons: list[str] = []
    contradictions: list[str] = []
    q_ids, c_ids = _identifiers(query, registry), _identifiers(candidate, registry)

    document_agrees = False
    other_agrees = False
    penalty = 0.0
    for system in sorted(q_ids.by_system.keys() & c_ids.by_system.keys()):
        doc = registry.document_for(system)
        label = doc.label if doc else system
        if q_ids.by_system[system] & c_ids.by_system[system]:
            if doc is not None and (doc.master or doc.server_issued):
                document_agrees = True
                reasons.append(f"{label} agrees")
            else:
                other_agrees = True
                reasons.append(f"{label} ({system}) agrees")
        elif doc is not None and doc.lifelong and (doc.master or doc.server_issued):
            contradictions.append(f"{label} differs")
        else:
            penalty += DIFFERENT_DOCUMENT_PENALTY
            reasons.append(f"{label} differs")
    if not document_agrees and q_ids.person_numbers & c_ids.person_numbers:
        document_agrees = True
        reasons.append("the same citizen ID number appears under different document types")

    demographic_conflicts: list[str] = []
    total = 0.0
    name = name_similarity(query, candidate)
    if name is not None and name[0] > 0:
        total += WEIGHTS["name"] * name[0]
        reasons.append(name[1])
    elif name is not None:
        penalty += NAME_MISMATCH_PENALTY
        reasons.append("names differ")
    birth = _birth_date(query, candidate)
    if birth is not None:
        if birth[1]:
            demographic_conflicts.append("birthDate contradicts")
        else:
            total += WEIGHTS["birthDate"] * birth[0]
            reasons.append("birthDate agrees" if birth[0] == 1.0 else "birthDate agrees in part")
    genders = query.get("gender"), candidate.get("gender")
    if genders[0] in ("male", "female") and genders[1] in ("male", "female"):
        if genders[0] == genders[1]:
            total += WEIGHTS["gender"]
            reasons.append("gender agrees")
        else:
            demographic_conflicts.append("gender contradicts")
    if _phones(query) & _phones(candidate):
        total += WEIGHTS["phone"]
        reasons.append("phone agrees (last 8 digits)")
    address = _address(query, candidate)
    if address:
        total += WEIGHTS["address"] * address
        reasons.append(f"address agrees ({address:.2f})")
    if other_agrees:
        total += OTHER_ID_BONUS
    total = max(0.0, min(WEIGHTED_CAP, total - penalty))

    if document_agrees:
        if contradictions or demographic_conflicts:
            return MatchResult(0.5, "possible", reasons + contradictions + demographic_conflicts)
        if name is not None and name[0] < UNRELATED_NAME:
            return MatchResult(0.85, "probable", reasons)  # reasons already say "names differ"
        return MatchResult(1.0, "certain", reasons)
    if contradictions or demographic_conflicts:
        return MatchResult(0.0, "certainly-not", contradictions + demographic_conflicts + reasons)
    total = round(total, 4)
    if total >= PROBABLE:
        return MatchResult(total, "probable", reasons)
    if total >= POSSIBLE:
        return MatchResult(total, "possible", reasons)
    return MatchResult(total, "certainly-not", reasons + ["too little in common"])
