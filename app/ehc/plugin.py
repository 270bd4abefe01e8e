"""The electronic health card attached to the server: card issuance on Patient writes, QR tokens,
their verification, and the /ehc endpoints for terminals.

Issuance runs in the Patient pre-create / pre-update events, after the master patient index (registered
first) has validated, normalised and de-duplicated the record, so the card is stored in the same version.
Which identifiers are master documents comes from the identifier registry the MPI publishes in
Services.extensions["identifiers"] (ehc does not import mpi); without it every card is temporary.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask

from app.core.errors import FhirError, conflict, unprocessable
from app.ehc.card_id import master_index_id
from app.ehc.cards import (
    EHC_SYSTEM,
    MASTER_INDEX_SYSTEM,
    CardStore,
    assign_card,
    card_kind,
    current_card,
    is_current,
)
from app.ehc.nonces import NonceStore
from app.ehc.signing import SigningKeys, signing_keys_path
from app.ehc.token import (
    MAX_LIFETIME,
    TokenClaims,
    TokenMalformed,
    check_times,
    issue_token,
    parse_legacy_static,
    parse_token,
    verify_token_signature,
)
from app.keyring import Keyring, keyring_for
from app.services import Services
from app.store.events import StoreEvent
from app.store.keys import identifier_key
from app.store.repository import write_context

# min, max, default seconds; the max is what verification allows (app.ehc.token.check_times)
DYNAMIC_VALIDITY = (5, MAX_LIFETIME["dynamic"], 60)
STATIC_VALIDITY = (3600, MAX_LIFETIME["static"], MAX_LIFETIME["static"])
_ISSUED = (EHC_SYSTEM, MASTER_INDEX_SYSTEM)
RESIDENT_ID_CARD = "01"  # CV02.01.101 document code of the resident ID card (居民身份证)


@dataclass
class Verification:
    valid: bool
    reason: str | None = None
    patient: str | None = None
    ehc_id: str | None = None
    expires: int | None = None
    token_type: str | None = None  # dynamic | static | legacy-static
    requires_confirmation: bool = False
    kid: str | None = None


class CardService:
    def __init__(self, svc: Services, keyring: Keyring) -> None:
        self.svc = svc
        self.keyring = keyring
        self.cards = CardStore(svc.repo.db, svc.leases)
        self.nonces = NonceStore(svc.repo.db)
        self.signing = SigningKeys(signing_keys_path(keyring.keys_dir), svc.settings.province)

    # -- issuance on Patient writes ------------------------------------------------------------------

    def master_document(self, resource: dict[str, Any]) -> tuple[str, str] | None:
        return next(iter(self.master_documents(resource)), None)

    def master_documents(self, resource: dict[str, Any]) -> list[tuple[str, str]]:
        """(document code, number) of each current master document, the resident ID card first."""
        registry = self.svc.extensions.get("identifiers")
        if registry is None:
            return []
        idents = [i for i in resource.get("identifier") or [] if isinstance(i, dict)]
        return [(registry.document_for(system).code, ident["value"]) for system in registry.master_systems()
                for ident in idents
                if is_current(ident, system) and isinstance(ident.get("value"), str) and ident["value"]]

    def _id_number_corrected(self, prior: dict[str, Any], resource: dict[str, Any]) -> bool:
        """Whether the resident ID number the current formal card was derived from was replaced by another.
        Only the ID number: it is for life, so another one means the first was someone else's. (A passport
        renewed under a new number is the same person's: the card stays.)"""
        card = current_card(prior)
        if card is None or card_kind(card) != "formal":
            return False
        before, after = self.master_documents(prior), self.master_documents(resource)
        ids_after = [d for d in after if d[0] == RESIDENT_ID_CARD]
        if not ids_after or before == after:
            return False
        mid = next((str(i.get("value")) for i in prior.get("identifier") or [] if is_current(i, MASTER_INDEX_SYSTEM)),
                   None)
        source = next((d for d in before if master_index_id(self.keyring.index_key, *d).hex().upper() == mid),
                      before[0] if before else None)
        return source is not None and source[0] == RESIDENT_ID_CARD and source not in after

    def pre_write(self, event: StoreEvent) -> None:
        res = event.resource
        if res is None:
            return
        ctx = write_context(event)
        target = res.get("_ehc_existing") or res.get("id")
        fresh = target is not None and target == ctx.extra.get("mpi_new_id")
        known = event.extra.get("patient_doc")  # read by the master index's handler of this same event
        if target and not fresh and known is not None and known[0] == target:
            doc = known[1]
        else:
            doc = self.svc.repo.get_doc("Patient", target) if target and not fresh else None
        prior = doc["res"] if doc and not doc.get("del") else {}
        issued = [i for i in prior.get("identifier") or [] if isinstance(i, dict) and i.get("system") in _ISSUED]
        if not ctx.extra.get("mpi_trusted"):
            known = {(i.get("system"), i.get("value")) for i in issued}
            idents = res.get("identifier") or []
            for n, ident in enumerate(idents):
                if isinstance(ident, dict) and ident.get("system") in _ISSUED and \
                        (ident.get("system"), ident.get("value")) not in known:
                    raise unprocessable(f"{ident['system']} is issued by the server only; a client cannot "
                                        "submit one", expression=f"Patient.identifier[{n}]")
            # The stored card identifiers are authoritative: a client neither drops nor edits them.
            res["identifier"] = [i for i in idents if not (isinstance(i, dict) and i.get("system") in _ISSUED)]
            res["identifier"] += copy.deepcopy(issued)
        if not _merged_away(res):  # a merged record keeps its cards as they were; the target holds them
            assign_card(res, self.master_document(res), self.keyring.index_key, self.keyring.card_root_key,
                        reissue=self._id_number_corrected(prior, res),
                        usable=lambda card: self.cards.status(card) != "cancelled")

    def post_write(self, event: StoreEvent) -> None:
        res = event.resource or {}
        if res.get("id") and not _merged_away(res):
            self.cards.sync(res["id"], res, event.previous)
            self._follow_death(res, event.previous)

    def _follow_death(self, res: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """A resident recorded as deceased: their card is suspended, so that no terminal accepts it and no new code
        is issued. Suspended, not cancelled (注销, final): a death recorded by mistake is withdrawn by clearing
        `deceased`, which reactivates a card this suspended (not one suspended for another reason)."""
        dead, was = _deceased(res), _deceased(previous)
        card = current_card(res)
        if dead == was or card is None:
            return
        card_id = str(card["value"])
        if dead and self.cards.status(card_id) == "active":
            self.cards.set_status(card_id, "suspended", res["id"], DECEASED)
        elif not dead and (self.cards.get(card_id) or {}).get("reason") == DECEASED and \
                self.cards.status(card_id) == "suspended":
            self.cards.set_status(card_id, "active", res["id"], "the record of death was withdrawn")

    def deleted(self, event: StoreEvent) -> None:
        self.cards.cancel_all(event.previous, "patient record deleted")

    # -- QR tokens -----------------------------------------------------------------------------------

    def issue(self, resource: dict[str, Any], token_type: str, validity: int | None,
              now: int | None = None) -> tuple[str, int, str]:
        """(token, exp, card id) for the Patient's current card."""
        now = int(time.time()) if now is None else now
        lo, hi, default = DYNAMIC_VALIDITY if token_type == "dynamic" else STATIC_VALIDITY
        if validity is None:
            validity = default
        if not lo <= validity <= hi:
            raise FhirError(400, f"validity must be {lo} to {hi} seconds for a {token_type} code, got {validity}",
                            expression="validity")
        card = current_card(resource)
        if card is None:
            raise unprocessable(f"Patient/{resource.get('id')} has no electronic health card")
        card_id = card["value"]
        status = self.cards.status(card_id)
        if status != "active":
            raise conflict(f"card {card_id} is {status}; no QR code can be issued", expression="status")
        key = self.signing.current(now)
        exp = min(now + validity, key.exp)
        claims = TokenClaims(token_type, card_id, now, exp, secrets.token_bytes(8))
        return issue_token(claims, key.kid, key.private), exp, card_id

    def verify(self, token: str, now: int | None = None) -> Verification:
        now = int(time.time()) if now is None else now
        legacy = parse_legacy_static(token) if isinstance(token, str) else None
        if legacy is not None:
            out = self._card(legacy, Verification(True, ehc_id=legacy, token_type="legacy-static"))
            out.requires_confirmation = out.valid
            return out
        try:
            parsed = parse_token(token)
        except TokenMalformed:
            return Verification(False, "malformed")
        claims = parsed.claims
        key = self.signing.get(parsed.kid)
        base = Verification(False, ehc_id=claims.ehc_id, expires=claims.exp, token_type=claims.type,
                            kid=parsed.kid)
        if key is None or now >= key.exp:
            base.reason = "unknown-key"
            return base
        if not verify_token_signature(parsed, key.public):
            base.reason = "bad-signature"
            return base
        # The times only once the signature verified: who has no key learns nothing more than bad-signature. All
        # before the card and the nonce: a refused token neither names its holder nor spends its nonce.
        reason = check_times(claims, now, key_nbf=key.nbf, key_exp=key.exp, key_retired=key.retired)
        if reason is not None:
            base.reason = reason
            return base
        base.valid = True
        out = self._card(claims.ehc_id, base)
        if not out.valid:
            return out
        if claims.type == "dynamic":
            if not self.nonces.use(parsed.kid, claims.nonce, claims.exp):
                out.valid, out.reason = False, "replayed"
        else:
            out.requires_confirmation = True
        return out

    def _card(self, card_id: str, out: Verification) -> Verification:
        patient = self.cards.patient_of(card_id)
        if patient is None and self.cards.get(card_id) is None:  # a released card (no patient) is nobody's here
            patient = self._patient_by_card(card_id)
        out.patient = patient
        status = self.cards.status(card_id)
        if status != "active":
            out.valid, out.reason = False, status
        elif patient is None:
            out.valid, out.reason = False, "unknown-card"
        return out

    def _patient_by_card(self, card_id: str) -> str | None:
        """Fallback for a card whose status record was never written (the process died after the Patient)."""
        for pid in self.svc.repo.keys.lookup(identifier_key("Patient", f"{EHC_SYSTEM}|{card_id}")):
            if self.svc.repo.exists("Patient", pid):
                return pid
        return None


DECEASED = "the resident has died (Patient.deceased)"


def _deceased(resource: dict[str, Any] | None) -> bool:
    if not resource:
        return False
    return resource.get("deceasedBoolean") is True or bool(resource.get("deceasedDateTime"))


def _merged_away(resource: dict[str, Any]) -> bool:
    return any(isinstance(link, dict) and link.get("type") == "replaced-by" for link in resource.get("link") or [])


def card_service(svc: Services) -> CardService:
    return svc.extensions["ehc"]


def attach(svc: Services) -> CardService:
    """Subscribe the card handlers (after the MPI's); also used by the CLI, which has no Flask app."""
    service: CardService | None = svc.extensions.get("ehc")
    if service is not None:
        return service
    service = svc.extensions["ehc"] = CardService(svc, keyring_for(svc))
    svc.events.subscribe_writes("Patient", pre=service.pre_write, post=service.post_write, deleted=service.deleted)
    return service


def init_app(app: Flask, svc: Services) -> None:
    from app.ehc.web import bp

    attach(svc).signing.current()  # the first signing key exists before any terminal asks for it
    app.register_blueprint(bp)
