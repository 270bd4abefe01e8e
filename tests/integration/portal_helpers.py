"""Helpers for the portal tests: residents with an ID card, records written as a hospital would, and the portal
login walked with requests (portal → /oauth/authorize login, picker, approval → /portal/callback)."""

from __future__ import annotations

import re
from typing import Any

import requests

from tests.integration.auth_helpers import create, csrf_of

LAB = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}


def id_number(birth: str, seq: str = "001", sex: str = "1") -> str:
    """A valid 18-character resident ID number (GB 11643) for Beijing Dongcheng (110101)."""
    body = f"110101{birth.replace('-', '')}{seq[:2]}{sex}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    return body + check


def resident(svc: Any, family: str, given: str, birth: str, seq: str = "001", province: str = "11",
             guardian_phone: str | None = None) -> tuple[str, str]:
    """(patient id, ID number) of a resident registered with a resident ID card (a child: with the phone number
    of a guardian, as hospitals record it)."""
    number = id_number(birth, seq, "1")
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": "male",
               "birthDate": birth, "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}]}
    if guardian_phone:
        patient["contact"] = [{"relationship": [{"coding": [{"code": "GUARD"}]}],
                               "telecom": [{"system": "phone", "value": guardian_phone}]}]
    return create(svc, patient, province), number


def glucose(svc: Any, pid: str, value: float, when: str, province: str = "11") -> str:
    return create(svc, {
        "resourceType": "Observation", "status": "final", "category": [{"coding": [LAB]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.9, "unit": "mmol/L"}, "high": {"value": 6.1, "unit": "mmol/L"}}],
    }, province)


def form_of(html: str, action_part: str) -> dict[str, str]:
    """The hidden fields of the form whose action contains action_part."""
    i = html.index(f'action="{action_part}') if f'action="{action_part}' in html else html.index(action_part)
    chunk = html[i:html.index("</form>", i)]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', chunk))


def grant_province_44(s: requests.Session, live: str) -> None:
    """Grant province 44 the resident's Observations for 2026 on the portal's consent page (the session logged in)."""
    page = s.get(f"{live}/portal/consents", timeout=10)
    form = {"csrf": csrf_of(page.text), "target": "province", "province": "44", "class": ["Observation"],
            "start": "2026-01-01", "end": "2027-01-01"}
    r = s.post(f"{live}/portal/consents", data=form, timeout=10)
    assert r.status_code == 200 and "已授权" in r.text, r.text[-3000:]


def portal_login(live: str, phone: str, password: str, patient_id: str | None = None,
                 session: requests.Session | None = None) -> tuple[requests.Session, requests.Response]:
    s = session or requests.Session()
    page = s.get(f"{live}/portal/login", timeout=10)
    r = s.post(f"{live}/portal/login", data={"csrf": csrf_of(page.text)}, timeout=10)
    return s, oauth_pages(s, r, phone, password, patient_id)


def oauth_pages(s: requests.Session, r: requests.Response, phone: str, password: str,
                patient_id: str | None) -> requests.Response:
    """Walk the authorization server's pages (login, picker, approval) until back on the portal."""
    for _ in range(6):
        if "/oauth/authorize" not in r.url:
            return r
        if 'name="phone"' in r.text:
            r = s.post(r.url, data={"csrf": csrf_of(r.text), "phone": phone, "password": password, "step": "login"},
                       timeout=10)
        elif 'value="pick"' in r.text:
            r = s.post(r.url, data={"csrf": csrf_of(r.text), "patient": patient_id, "step": "pick"}, timeout=10)
        elif 'value="approve"' in r.text:
            data = {"csrf": csrf_of(r.text), "step": "approve", "decision": "approve"}
            if patient_id:
                data["patient"] = patient_id
            r = s.post(r.url, data=data, timeout=10)
        else:
            raise AssertionError(r.text[:2000])
    raise AssertionError("the authorization pages did not end")
