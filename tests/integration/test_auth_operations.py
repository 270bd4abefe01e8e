"""$operations go through the same access decision as interactions: the access each declares, on the
instance it names (a patient token cannot reach another patient's $everything or QR code, nor merge)."""

from __future__ import annotations

import json

from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import FJ, bearer, patient, stored_token


def test_operations_respect_the_patient_compartment(web, svc):
    mine, other = patient(svc, "孙", "一"), patient(svc, "周", "二")
    token = stored_token(svc, "patient/*.rs", patient=mine)
    assert web.get(f"/fhir/Patient/{mine}/$everything", headers=bearer(token)).status_code == 200
    refused = web.get(f"/fhir/Patient/{other}/$everything", headers=bearer(token))
    assert refused.status_code == 403 and refused.json["resourceType"] == "OperationOutcome"
    qr = web.post(f"/fhir/Patient/{other}/$ehc-qrcode", headers=bearer(token, **{"Content-Type": FJ}),
                  data=json.dumps({"resourceType": "Parameters"}))
    assert qr.status_code == 403


def test_operations_that_change_data_need_write_scopes(web, svc):
    a, b = patient(svc, "吴", "三"), patient(svc, "郑", "四")
    reader = stored_token(svc, "system/Patient.rs")
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{a}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{b}"}}]}
    r = web.post("/fhir/Patient/$merge", headers=bearer(reader, **{"Content-Type": FJ}), data=json.dumps(params))
    assert r.status_code == 403
    status = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"}]}
    r = web.post(f"/fhir/Patient/{a}/$ehc-status", headers=bearer(reader, **{"Content-Type": FJ}),
                 data=json.dumps(status))
    assert r.status_code == 403
    assert web.get(f"/fhir/Patient/{a}", headers=bearer(reader)).json.get("active") is not False
