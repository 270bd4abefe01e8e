"""The auth documents (mongoengine) and the store that reads and writes them.

mongoengine binds documents to a connection alias; one alias per Services instance lets several
databases live in one process (tests). Queries go through `AuthStore`, which builds querysets and saves
instances on its own alias's collections (thread-safe, unlike the class-level `switch_db`). FerretDB v1 uses no
secondary index, so every hot lookup here is by `_id`: tokens and codes are keyed by the SHA-256 of their
value (a database dump reveals no usable token), accounts and login locks by an HMAC of the phone number, used
client assertions by `client|jti` (a second insert of the same `_id` is a replay), revoked token families by
the family id. Single use is decided by one findAndModify on `_id` (`claim`, `take`): atomic on MongoDB, and on
the FerretDB build of this repository, which serialises update and findAndModify.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, TypeVar

import mongoengine
from mongoengine import BooleanField, DictField, Document, FloatField, IntField, ListField, StringField
from mongoengine.connection import get_db
from mongoengine.queryset import QuerySet
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from app.store.database import client_options


def digest(value: str) -> str:
    """The key a secret value (token, code, client secret) is stored under."""
    return hashlib.sha256(value.encode()).hexdigest()


def now() -> int:
    return int(time.time())


class Client(Document):
    meta = {"collection": "auth_clients", "strict": False}
    client_id = StringField(primary_key=True)
    name = StringField(required=True)
    secret_hash = StringField()  # sha256 of a 256-bit random secret
    public = BooleanField(default=False)
    scopes = StringField(required=True)
    redirect_uris = ListField(StringField())
    jwks = DictField()
    province = StringField(required=True, regex=r"^\d{2}$")
    organization = StringField()
    break_glass = BooleanField(default=False)
    resource_server = BooleanField(default=False)  # may introspect tokens of other clients
    active = BooleanField(default=True)
    created = IntField(default=now)


class AuthorizationCode(Document):
    meta = {"collection": "auth_codes", "strict": False}
    code_hash = StringField(primary_key=True)
    client_id = StringField(required=True)
    redirect_uri = StringField()
    scope = StringField()
    account = StringField()
    patient = StringField()
    encounter = StringField()  # EHR launch context
    fhir_user = StringField()
    nonce = StringField()
    code_challenge = StringField()
    code_challenge_method = StringField()
    expires_at = IntField(required=True)


class Token(Document):
    """An access or refresh token, stored under the hash of its value."""

    meta = {"collection": "auth_tokens", "strict": False}
    token_hash = StringField(primary_key=True)
    kind = StringField(choices=("access", "refresh"), required=True)
    client_id = StringField(required=True)
    scope = StringField()
    account = StringField()
    patient = StringField()
    encounter = StringField()  # EHR launch context
    fhir_user = StringField()
    province = StringField()
    organization = StringField()
    break_glass = BooleanField(default=False)  # the client is registered for break-the-glass
    purpose = StringField()  # purpose of use asked at the token request (ETREAT)
    issued_at = IntField(default=now)
    expires_at = IntField(required=True)
    revoked = BooleanField(default=False)
    parent = StringField()  # refresh token hash an access token came from
    children = ListField(StringField())  # access token hashes issued from this refresh token
    family = StringField()  # the grant: hash of its first refresh token, shared by every token descended from it
    spent_at = IntField()  # a refresh token: when it was used (it is used once)


class TokenFamily(Document):
    """A revoked grant ("token family"): every access and refresh token whose `family` is this id is dead.
    Written when a refresh token is revoked or a spent one is presented again; absent otherwise."""

    meta = {"collection": "auth_token_families", "strict": False}
    family = StringField(primary_key=True)
    revoked_at = IntField(required=True)
    reason = StringField()
    expires_at = IntField(required=True)  # no token of the family outlives this


class Launch(Document):
    """An EHR launch context (SMART App Launch 2.0 "EHR launch"): created by an EHR, given to an app as the
    opaque `launch` parameter, used once at the authorization endpoint within five minutes."""

    meta = {"collection": "auth_launches", "strict": False}
    launch_hash = StringField(primary_key=True)  # sha256 of the opaque launch id
    patient = StringField(required=True)
    encounter = StringField()
    client_id = StringField()  # the only app that may use it, when the EHR names one
    created_by = StringField(required=True)  # the EHR's client_id
    expires_at = IntField(required=True)


class ResidentAccount(Document):
    """A resident's login (phone + password), bound to one or more patients (一人绑定多人)."""

    meta = {"collection": "auth_accounts", "strict": False}
    phone_key = StringField(primary_key=True)  # HMAC-SHA256(server secret, phone): no phone in clear
    phone_hint = StringField()  # 138****5678, for display only
    password_hash = StringField(required=True)
    patients = ListField(StringField())  # bound Patient ids, self first
    fhir_user = StringField()  # Patient/<self> (or RelatedPerson/<id>)
    active = BooleanField(default=True)
    failed = IntField(default=0)  # legacy; failed logins are counted in LoginLock, for any phone
    created = IntField(default=now)


class LoginLock(Document):
    """Failed logins of one phone number (registered or not: the answer must not tell) and its lock."""

    meta = {"collection": "auth_login_locks", "strict": False}
    phone_key = StringField(primary_key=True)  # HMAC of the normalised number, as ResidentAccount
    failures = IntField(default=0)  # consecutive failures
    last = FloatField(default=0.0)  # time of the last failure (unix seconds)
    locked_until = FloatField(default=0.0)
    unlock_logged = FloatField(default=0.0)  # the locked_until whose end has been audited


class Binding(Document):
    """One account ↔ patient binding with the RelatedPerson and Consent that record it."""

    meta = {"collection": "auth_bindings", "strict": False}
    key = StringField(primary_key=True)  # "<account>|<patient>"
    account = StringField(required=True)
    patient = StringField(required=True)
    relationship = StringField()  # v3-RoleCode: SELF, MTH, FTH, CHILD, SPS ...
    related_person = StringField()
    consent = StringField()
    consent_by = StringField()  # Patient/<id> (the relative) or RelatedPerson/<id> (a guardian)
    active = BooleanField(default=True)
    created = IntField(default=now)


class UsedAssertion(Document):
    """A client assertion's jti, kept until the assertion expires. Stored beside the tokens (same
    collection, `_id` "jti|<client_id>|<jti>") so a grant writes its jti and its token in one round trip."""

    meta = {"collection": "auth_tokens", "strict": False}
    key = StringField(primary_key=True)
    expires_at = IntField(required=True)


class LoginSession(Document):
    """A resident's login at the authorization server. The browser's signed cookie names it; a logout deletes it,
    so a copy of the cookie taken before approves nothing after (the cookie alone cannot be recalled)."""

    meta = {"collection": "auth_logins", "strict": False}
    sid = StringField(primary_key=True)
    account = StringField(required=True)
    expires_at = IntField(required=True)


class SmsCode(Document):
    meta = {"collection": "auth_sms", "strict": False}
    phone_key = StringField(primary_key=True)
    code_hash = StringField(required=True)
    expires_at = IntField(required=True)
    attempts = IntField(default=0)


D = TypeVar("D", bound=Document)
FAMILY_LIFETIME = 31 * 24 * 3600  # longer than any refresh token lives (app.auth.server.REFRESH_TTL)


class AuthStore:
    """Reads and writes the auth documents on one database through a mongoengine alias."""

    TOKEN_CACHE_SECONDS = 2.0

    def __init__(self, uri: str, db_name: str, alias: str) -> None:
        self._tokens: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tokens_lock = threading.Lock()
        # The store's client options: an unreachable database fails within about a second (503), not 10 s.
        mongoengine.connect(db=db_name, host=uri, alias=alias, uuidRepresentation="standard", **client_options(uri))
        self.alias = alias
        self.db = get_db(alias)

    def collection(self, cls: type[Document]) -> Any:
        return self.db[cls._get_collection_name()]

    def objects(self, cls: type[D]) -> QuerySet:
        return QuerySet(cls, self.collection(cls))

    def get(self, cls: type[D], key: str) -> D | None:
        raw = self.collection(cls).find_one({"_id": key})
        return cls._from_son(raw) if raw else None

    def raw(self, cls: type[Document], key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.collection(cls).find_one({"_id": key})
        return found

    def save(self, doc: D, insert: bool = False) -> D:
        """Validate and write (insert, or replace by _id). Written on this store's collection directly:
        mongoengine's own save() resolves the class-level alias, which is shared between databases."""
        doc.validate()
        son = doc.to_mongo()
        coll = self.collection(type(doc))
        if insert:
            coll.insert_one(son)
        else:
            coll.replace_one({"_id": son["_id"]}, son, upsert=True)
        return doc

    def insert_once(self, doc: Document) -> bool:
        """Insert; False when a document with this _id exists already (a replay)."""
        try:
            self.save(doc, insert=True)
        except DuplicateKeyError:
            return False
        return True

    def set(self, cls: type[Document], key: str, **fields: Any) -> int:
        modified: int = self.collection(cls).update_one({"_id": key}, {"$set": fields}).matched_count
        return modified

    def insert_all(self, docs: list[Document]) -> None:
        """Insert documents of one collection in one round trip, in order (stops at the first duplicate:
        pymongo BulkWriteError)."""
        if docs:
            for doc in docs:
                doc.validate()
            self.collection(type(docs[0])).insert_many([d.to_mongo() for d in docs], ordered=True)

    def claim(self, cls: type[Document], key: str, **fields: Any) -> dict[str, Any] | None:
        """Set fields and return the document as it was before (one findAndModify on `_id`): of several
        concurrent claimers exactly one sees the fields unset."""
        before: dict[str, Any] | None = self.collection(cls).find_one_and_update(
            {"_id": key}, {"$set": fields}, return_document=ReturnDocument.BEFORE)
        return before

    def take(self, cls: type[D], key: str) -> D | None:
        """Remove and return (single use: two concurrent takers never both get it)."""
        raw = self.collection(cls).find_one_and_delete({"_id": key})
        return cls._from_son(raw) if raw else None

    def delete(self, cls: type[Document], key: str) -> None:
        self.collection(cls).delete_one({"_id": key})

    def token(self, key: str) -> dict[str, Any] | None:
        """A stored token by hash, marked `revoked` when its family has been revoked (uncached)."""
        raw = self.raw(Token, key)
        if raw is not None and raw.get("family") and not raw.get("revoked") \
                and self.raw(TokenFamily, raw["family"]) is not None:
            raw = {**raw, "revoked": True}
        return raw

    def access_token(self, key: str) -> dict[str, Any] | None:
        """A stored token by hash (family revocation applied), through a short in-process cache: a hit
        saves the database round trips on every FHIR request. Revocation through this process drops the
        entries at once (forget, forget_family); other processes see it within TOKEN_CACHE_SECONDS. Expiry
        is checked by the caller on every use."""
        hit = self._tokens.get(key)
        t = time.monotonic()
        if hit is not None and hit[0] > t:
            return hit[1]
        raw = self.token(key)
        if raw is not None:
            with self._tokens_lock:
                if len(self._tokens) > 50_000:
                    self._tokens.clear()
                self._tokens[key] = (t + self.TOKEN_CACHE_SECONDS, raw)
        return raw

    def forget(self, *keys: str) -> None:
        with self._tokens_lock:
            for key in keys:
                self._tokens.pop(key, None)

    def revoke_family(self, family: str, reason: str) -> None:
        """Revoke every token of a grant, those issued later included (they carry the family id)."""
        try:
            self.save(TokenFamily(family=family, revoked_at=now(), reason=reason,
                                  expires_at=now() + FAMILY_LIFETIME), insert=True)
        except DuplicateKeyError:
            pass  # revoked already
        self.forget_family(family)

    def forget_family(self, family: str) -> None:
        with self._tokens_lock:
            for key in [k for k, (_, raw) in self._tokens.items() if raw.get("family") == family]:
                self._tokens.pop(key, None)

    def close(self) -> None:
        mongoengine.disconnect(alias=self.alias)
