"""Break-the-glass (emergency access across provinces without consent), and its limits.

A client registered for it (`ehc clients add --break-glass`) that asks with purpose of use ETREAT may read a
record of another province without the patient's Consent, but only:
- for one named patient: the request itself must name that patient (a read of one record, a search by
  patient/subject/_id with one value, an operation on Patient/<id>); a broad search never breaks the glass;
- while its access token is younger than WINDOW seconds (time-limited: a new token for a new emergency);
- for at most PATIENTS_PER_DAY distinct patients per client and UTC day (rate-limited; the ledger is in the
  database, so every worker process counts the same);
- flagged: the access is audited with purpose of use ETREAT and an outcome text asking for review, and it is in
  the patient's own audit trail (`AuditEvent?patient=`), so the resident sees it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pymongo.collection import Collection

from app.core.access import REVIEW_NOTE, Principal

WINDOW = 15 * 60
PATIENTS_PER_DAY = 5
__all__ = ["BreakGlassLedger", "PATIENTS_PER_DAY", "REVIEW_NOTE", "WINDOW"]


class BreakGlassLedger:
    def __init__(self, collection: Collection) -> None:
        self.col = collection

    def admit(self, principal: Principal, patient_id: str) -> bool:
        if not principal.client_id or not principal.issued_at or time.time() - principal.issued_at > WINDOW:
            return False
        day = datetime.now(UTC).strftime("%Y%m%d")
        key = f"{principal.client_id}|{day}"
        doc = self.col.find_one({"_id": key}) or {}
        patients = list(doc.get("patients") or [])
        if patient_id in patients:
            return True
        if len(patients) >= PATIENTS_PER_DAY:
            return False
        self.col.update_one({"_id": key}, {"$addToSet": {"patients": patient_id}}, upsert=True)
        after = self.col.find_one({"_id": key}) or {}
        # parallel first uses may both have added: the ledger, not the reader, is the judge
        return patient_id in (after.get("patients") or [])[:PATIENTS_PER_DAY]
