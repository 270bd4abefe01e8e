"""Synthetic residents and records for seeding, demos and benchmarks: valid GB 11643 ID numbers, Chinese
names, phone numbers, lab observations. Deterministic for a given random.Random."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

FAMILY = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌浩宇欣怡梓涵子轩雨婷佳琪思远博文"
REGIONS = ["110101", "310104", "440305", "510107", "330106", "420102", "320102", "370102", "610113", "500103"]
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
UNITS = {"2339-0": ("mmol/L", 3.5, 9.0), "718-7": ("g/L", 110, 170), "2093-3": ("mmol/L", 3.0, 7.0),
         "4548-4": ("%", 4.0, 8.0), "8480-6": ("mm[Hg]", 95, 160), "8462-4": ("mm[Hg]", 60, 100),
         "29463-7": ("kg", 40, 110), "8302-2": ("cm", 145, 195)}


def check_char(first17: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True)) % 11]


def resident_id(region: str, born: date, seq: int, male: bool) -> str:
    seq = seq % 500 * 2 + (1 if male else 0)
    body = f"{region}{born:%Y%m%d}{seq:03d}"
    return body + check_char(body)


def patient(i: int, rng: random.Random, mrn_system: str = "urn:ehc:mrn:bench") -> tuple[dict[str, Any], str]:
    male = rng.random() < 0.5
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365))
    family = FAMILY[rng.randrange(len(FAMILY))]
    given = "".join(GIVEN[rng.randrange(len(GIVEN))] for _ in range(rng.choice((1, 2))))
    mrn = f"M{i:08d}"
    res = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": resident_id(REGIONS[i % len(REGIONS)], born, i, male)},
            {"system": mrn_system, "value": mrn},
        ],
        "name": [{"family": family, "given": [given], "text": family + given}],
        "gender": "male" if male else "female",
        "birthDate": born.isoformat(),
        "telecom": [{"system": "phone", "value": f"13{rng.randrange(10**9):09d}"}],
        "address": [{"city": "北京市", "district": "东城区", "line": [f"和平里{rng.randrange(1, 200)}号"]}],
        "active": True,
    }
    return res, mrn


def observation(patient_id: str, code: str, rng: random.Random) -> dict[str, Any]:
    unit, lo, hi = UNITS.get(code, ("1", 0, 100))
    when = date(2020, 1, 1) + timedelta(days=rng.randrange(5 * 365))
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"{when.isoformat()}T08:{rng.randrange(60):02d}:00+08:00",
        "valueQuantity": {"value": round(rng.uniform(lo, hi), 1), "unit": unit,
                          "system": "http://unitsofmeasure.org", "code": unit},
    }
