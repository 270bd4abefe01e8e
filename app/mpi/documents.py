"""Check functions for Chinese identity document numbers, one per validator name of the NamingSystem data.

Each check takes a stripped value and returns the normalised value with what the number itself says (birth
date, sex, province), or raises IdentifierInvalid. Which check applies to which identifier system, and the
regex gate in front of it, are data (fhir_profiles/NamingSystem/*.json); this module holds the arithmetic:

- gb11643   居民身份证 GB 11643-1999: address code, birth date, sequence (odd: male), ISO 7064 MOD 11-2
            check character; 港澳台居民居住证 with address code exactly 810000 / 820000 / 830000;
            legacy 15-digit numbers (pre-1999, YYMMDD, no check character) only when allowed, normalised
            to 18 characters.
- fpr-2023  外国人永久居留身份证 (2023): 18 characters, first digit 9, province, country, birth date,
            sequence, MOD 11-2.
- fpr-old   外国人永久居留身份证 (old): 3 letters + 12 digits, check digit weighted 7-3-1 with
            A=10 ... Z=35, mod 10.
- hex64     电子健康卡ID: 64 hexadecimal characters, normalised to upper case.
- regex     the NamingSystem's regex is the whole rule (passports, travel permits, officer card).
- nonempty  any non-blank value of at most 256 characters (record numbers, insurance codes, opaque tokens).

Everything here runs on every Patient write and on bulk imports of millions of rows: no I/O, no regex compiled
per call.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple


class IdentifierInvalid(ValueError):
    """An identifier value (or system) that breaks its document's rule; `reason` says what is wrong."""

    def __init__(self, reason: str, *, field: str = "value") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field  # the Identifier element at fault: "value" or "system"


class NotApplicable(IdentifierInvalid):
    """The value does not have this check's shape; another alternative of "a|b" may still accept it."""


@dataclass(frozen=True)
class ProvinceTable:
    """GB/T 2260 province codes as loaded from fhir_profiles/provinces.json."""

    names: Mapping[str, str]
    national_node: str = "00"
    permit_address_codes: Mapping[str, str] = field(default_factory=dict)  # "81" -> "810000"

    def is_address_prefix(self, code: str) -> bool:
        return code in self.names and code != self.national_node


class Parsed(NamedTuple):
    value: str
    birth_date: date | None = None
    sex: str | None = None
    province: str | None = None


Check = Callable[[str, ProvinceTable, bool, date], Parsed]

# ISO 7064 MOD 11-2 as GB 11643 states it: weights 2^(17-i) mod 11 and the check character table.
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
# re.ASCII throughout: \d is 0-9. Python's \d also takes full-width and other digits, which int() reads but the
# check character (computed on ASCII) cannot: such a number ended in a 500.
_DIGITS17 = re.compile(r"\d{17}[\dX]", re.ASCII)
_DIGITS15 = re.compile(r"\d{15}", re.ASCII)


_ASCII_ZERO_BIAS = 48 * sum(_WEIGHTS)  # the weighted sum of the ASCII codes over-counts by this much


def mod11_2(first17: str) -> str:
    """The GB 11643 check character of 17 digits."""
    total = sum(map(operator.mul, first17.encode("ascii"), _WEIGHTS)) - _ASCII_ZERO_BIAS
    return _CHECK_CHARS[total % 11]


def _birth_date(year: int, month: int, day: int, today: date) -> date:
    try:
        born = date(year, month, day)
    except ValueError:
        text = f"{year:04d}-{month:02d}-{day:02d}"
        raise IdentifierInvalid(f"出生日期无效 birth date {text} does not exist") from None
    if born > today:
        raise IdentifierInvalid(f"出生日期在未来 birth date {born.isoformat()} is in the future")
    return born


def _check_mod11(value: str) -> None:
    expected = mod11_2(value[:17])
    if value[17] != expected:
        raise IdentifierInvalid(f"校验码错误 check character should be '{expected}', got '{value[17]}'")


def check_gb11643(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    value = value.upper()
    if len(value) == 15 and _DIGITS15.fullmatch(value):
        if not allow_legacy:
            raise IdentifierInvalid("15-digit legacy ID numbers are accepted only by bulk import")
        body = value[:6] + "19" + value[6:]
        value = body + mod11_2(body)
    if len(value) != 18:
        raise NotApplicable(f"an ID number has 18 characters, got {len(value)}")
    if value[0] == "9":  # the 2023 foreigner card shares the layout; "gb11643|fpr-2023" sends it there
        raise NotApplicable(f"地址码错误 no province '{value[:2]}' in GB/T 2260")
    if not _DIGITS17.fullmatch(value):
        raise IdentifierInvalid("an ID number is 17 digits and a digit or X")
    province = value[:2]
    if not provinces.is_address_prefix(province):
        raise IdentifierInvalid(f"地址码错误 no province '{province}' in GB/T 2260")
    permit_code = provinces.permit_address_codes.get(province)
    if permit_code is not None and value[:6] != permit_code:
        raise IdentifierInvalid(f"居住证 address code must be exactly {permit_code}, got {value[:6]}")
    born = _birth_date(int(value[6:10]), int(value[10:12]), int(value[12:14]), today)
    _check_mod11(value)
    return Parsed(value, born, "male" if (ord(value[16]) - 48) % 2 else "female", province)


def check_fpr_2023(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    value = value.upper()
    if len(value) != 18 or value[0] != "9":
        raise NotApplicable("a 2023 permanent residence card number has 18 characters and starts with 9")
    if not _DIGITS17.fullmatch(value):
        raise IdentifierInvalid("a permanent residence card number is 17 digits and a digit or X")
    province = value[1:3]
    if not provinces.is_address_prefix(province):
        raise IdentifierInvalid(f"省份码错误 no province '{province}' in GB/T 2260")
    born = _birth_date(int(value[6:10]), int(value[10:12]), int(value[12:14]), today)
    _check_mod11(value)
    return Parsed(value, born, "male" if (ord(value[16]) - 48) % 2 else "female", province)


_FPR_OLD = re.compile(r"[A-Z]{3}\d{12}", re.ASCII)
_FPR_OLD_WEIGHTS = ((7, 3, 1) * 5)[:14]


def check_fpr_old(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    value = value.upper()
    if not _FPR_OLD.fullmatch(value):
        raise NotApplicable("an old permanent residence card number is 3 letters and 12 digits")
    # YYMMDD without a century: the date must exist in one of the two candidate centuries.
    yy, month, day = int(value[7:9]), int(value[9:11]), int(value[11:13])
    errors = []
    for century in (2000, 1900):
        try:
            _birth_date(century + yy, month, day, today)
            break
        except IdentifierInvalid as exc:
            errors.append(exc)
    else:
        raise errors[-1]
    total = 0
    for char, weight in zip(value[:14], _FPR_OLD_WEIGHTS, strict=True):
        total += (ord(char) - 55 if char >= "A" else ord(char) - 48) * weight
    expected = str(total % 10)
    if value[14] != expected:
        raise IdentifierInvalid(f"校验码错误 check digit should be '{expected}', got '{value[14]}'")
    province = value[3:5]
    return Parsed(value, None, None, province if provinces.is_address_prefix(province) else None)


_HEX64 = re.compile(r"[0-9A-F]{64}")


def check_hex64(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    value = value.upper()
    if not _HEX64.fullmatch(value):
        raise IdentifierInvalid(f"expected 64 hexadecimal characters, got {len(value)} characters")
    return Parsed(value)


def check_regex_only(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    return Parsed(value)  # the NamingSystem regex, applied by the caller, is the whole rule


MAX_OPAQUE_LENGTH = 256


def check_nonempty(value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
    if not value:
        raise IdentifierInvalid("the value is empty")
    if len(value) > MAX_OPAQUE_LENGTH:
        raise IdentifierInvalid(f"the value is longer than {MAX_OPAQUE_LENGTH} characters")
    return Parsed(value)


CHECKS: dict[str, Check] = {
    "gb11643": check_gb11643,
    "fpr-2023": check_fpr_2023,
    "fpr-old": check_fpr_old,
    "hex64": check_hex64,
    "regex": check_regex_only,
    "nonempty": check_nonempty,
}


class CompiledRule:
    """A document's validator spec ("a|b": the first alternative whose shape fits decides) and regex gate."""

    __slots__ = ("checks", "regex", "label")

    def __init__(self, validator: str, regex: str | None, label: str) -> None:
        names = [n.strip() for n in validator.split("|") if n.strip()]
        unknown = [n for n in names if n not in CHECKS]
        if not names or unknown:
            raise ValueError(f"{label}: unknown validator {validator!r} (known: {', '.join(CHECKS)})")
        if "regex" in names and not regex:
            raise ValueError(f"{label}: validator 'regex' needs a regex")
        self.checks = tuple(CHECKS[n] for n in names)
        self.regex = re.compile(regex, re.ASCII) if regex else None  # a NamingSystem's: \d is 0-9
        self.label = label

    def __call__(self, value: str, provinces: ProvinceTable, allow_legacy: bool, today: date) -> Parsed:
        shape_errors: list[str] = []
        for check in self.checks:
            try:
                parsed = check(value, provinces, allow_legacy, today)
            except NotApplicable as exc:
                shape_errors.append(exc.reason)
                continue
            # The data regex gates the normalised value, so a JSON edit can tighten any rule.
            if self.regex is not None and not self.regex.fullmatch(parsed.value):
                raise IdentifierInvalid(f"格式错误 not in the {self.label} format {self.regex.pattern}")
            return parsed
        raise IdentifierInvalid("格式错误 " + "; or ".join(shape_errors))
