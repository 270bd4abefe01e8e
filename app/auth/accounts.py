"""Resident accounts: phone + password, and one-time SMS codes; failed logins and the login lock.

The phone number is never stored in clear: the account's key is an HMAC of it (app.auth.keys), with a
masked hint for display. Passwords are hashed with werkzeug (scrypt). An SMS code is six digits, lives
five minutes, is used once and allows five attempts; it goes through the configured sender
(`svc.extensions["sms_sender"]`, a callable(phone, text)) or, in development, to the log.

Failed logins are counted per phone number in the database (LoginLock, keyed like the account, so every
worker process sees the same count), for numbers with and without an account alike: the answers do not tell
whether a number is registered. After LOCK_AFTER consecutive failures the number is locked for
LOCK_BASE_SECONDS, and every further failure doubles the lock, up to LOCK_MAX_SECONDS; a successful login
clears the count, and failures older than FAILURE_MEMORY are forgotten. An attempt is counted before its
password or code is checked (`begin_attempt`), so that attempts sent at once get no more checks than one
after the other. Counting and locking are single findAndModify / update calls on `_id` (atomic, see
app.auth.models).
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import secrets
import string
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from werkzeug.security import check_password_hash, generate_password_hash

from app.auth.keys import AuthKeys
from app.auth.models import AuthStore, LoginLock, ResidentAccount, SmsCode, digest, now

log = logging.getLogger("ehc.auth")
PHONE = re.compile(r"^1[3-9][0-9]{9}$")
SMS_TTL = 300
SMS_ATTEMPTS = 5
SMS_RESEND_SECONDS = 60  # one code a minute per number: a number cannot be flooded through the login page
_DUMMY_HASH = generate_password_hash("not a password")
Sender = Callable[[str, str], None]
LOCK_AFTER = 5  # consecutive failed logins before the first lock
LOCK_BASE_SECONDS = 60  # the first lock; each further failure doubles it
LOCK_MAX_SECONDS = 3600
FAILURE_MEMORY = 24 * 3600  # a count whose last failure is older than this starts again
PRUNE_EVERY = 600.0
_last_prune = 0.0


def _digits(phone: str) -> str:
    """The ASCII digits of a typed number, full-width ones (an input method's １３８) read as their ASCII forms."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", phone) if ch in string.digits)


def normalize_phone(phone: str) -> str:
    """A mainland mobile number as 11 digits (the country code +86 or 0086, spaces, dashes, dots and
    parentheses dropped); ValueError when it is not one."""
    digits = _digits(phone)
    if digits.startswith("0086") and len(digits) == 15:
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not PHONE.match(digits):
        raise ValueError(f"not a mainland mobile number: {mask(digits)}")
    return digits


def phone_bucket(phone: str) -> str:
    """What the rate limit and the login lock count a typed phone number as: the normalised number, so
    that every way of writing one number shares one count; for text that is no mobile number, its digits."""
    try:
        return normalize_phone(phone)
    except ValueError:
        return _digits(phone)


def mask(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def create_account(store: AuthStore, keys: AuthKeys, phone: str, password: str,
                   patients: Iterable[str] = (), fhir_user: str | None = None) -> ResidentAccount:
    phone = normalize_phone(phone)
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    key = keys.phone_key(phone)
    if store.get(ResidentAccount, key) is not None:
        raise ValueError(f"an account for {mask(phone)} exists already")
    account = ResidentAccount(phone_key=key, phone_hint=mask(phone),
                              password_hash=generate_password_hash(password), patients=list(patients),
                              fhir_user=fhir_user)
    store.save(account, insert=True)
    return account


def account_key(keys: AuthKeys, phone: str) -> str | None:
    """The key an account for this phone number has (however the number is written), None for a number no
    account can have (not a mainland mobile number)."""
    try:
        return keys.phone_key(normalize_phone(phone))
    except ValueError:
        return None


def find_account(store: AuthStore, keys: AuthKeys, phone: str) -> ResidentAccount | None:
    key = account_key(keys, phone)
    if key is None:
        return None
    account = store.get(ResidentAccount, key)
    return account if account is not None and account.active else None


def login_with_password(store: AuthStore, keys: AuthKeys, phone: str,
                        password: str) -> ResidentAccount | None:
    account = find_account(store, keys, phone)
    if account is None:
        check_password_hash(_DUMMY_HASH, password)  # same work whether or not the account exists
        return None
    if not check_password_hash(account.password_hash, password):
        return None  # counted by the caller (record_failure), as for a number without an account
    return account


def send_sms_code(store: AuthStore, keys: AuthKeys, phone: str, sender: Sender | None) -> bool:
    """Issue a code when an account has this phone (answering the same either way to the caller)."""
    account = find_account(store, keys, phone)
    if account is None:
        return False
    last = store.get(SmsCode, account.phone_key)
    if last is not None and last.expires_at - SMS_TTL + SMS_RESEND_SECONDS > now():
        return False  # the code sent less than a minute ago stands
    code = f"{secrets.randbelow(10**6):06d}"
    store.save(SmsCode(phone_key=account.phone_key, code_hash=digest(account.phone_key + code),
                       expires_at=now() + SMS_TTL, attempts=0))
    text = f"【电子健康卡】验证码 {code}，5分钟内有效。Your verification code is {code}."
    number = normalize_phone(phone)
    if sender is not None:
        sender(number, text)
    else:
        log.warning("development: no SMS sender configured; the code for %s is %s", mask(number), code)
    return True


def login_with_sms(store: AuthStore, keys: AuthKeys, phone: str, code: str) -> ResidentAccount | None:
    account = find_account(store, keys, phone)
    if account is None:
        return None
    sms = store.get(SmsCode, account.phone_key)
    if sms is None or sms.expires_at <= now() or sms.attempts >= SMS_ATTEMPTS:
        return None
    if not hmac.compare_digest(sms.code_hash, digest(account.phone_key + code.strip())):
        store.set(SmsCode, account.phone_key, attempts=sms.attempts + 1)
        return None
    store.delete(SmsCode, account.phone_key)  # used once
    return account


# -- failed logins and the lock ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LockState:
    locked_for: int = 0  # seconds the number stays locked (0: not locked)
    failures: int = 0  # consecutive failures counted so far
    expired_lock: int = 0  # a lock that ended (its locked_until) and that nobody has recorded yet
    after_lock: int = 0  # the number of the one attempt a lock that has run out lets be checked (0: none)


def lock_key(keys: AuthKeys, phone: str) -> str:
    """The LoginLock key of a typed number: the account key of its normalised form."""
    return keys.phone_key(phone_bucket(phone))


def lock_seconds(failures: int) -> int:
    """How long the failure with this number locks (0: it does not)."""
    if failures < LOCK_AFTER:
        return 0
    return int(min(LOCK_MAX_SECONDS, LOCK_BASE_SECONDS * 2 ** min(failures - LOCK_AFTER, 20)))


def check_lock(store: AuthStore, key: str) -> LockState:
    """The lock state before a login attempt. A lock that has run out is reported once (expired_lock),
    to whichever process sees it first, so that its end is audited exactly once."""
    doc = store.raw(LoginLock, key)
    if doc is None:
        return LockState()
    t = time.time()
    until = float(doc.get("locked_until") or 0)
    failures = int(doc.get("failures") or 0)
    if until > t:
        return LockState(math.ceil(until - t), failures)
    expired = 0
    if until and float(doc.get("unlock_logged") or 0) < until:
        before = store.collection(LoginLock).find_one_and_update(
            {"_id": key}, {"$max": {"unlock_logged": until}}, return_document=ReturnDocument.BEFORE)
        if before is not None and float(before.get("unlock_logged") or 0) < until:
            expired = int(until)
    if float(doc.get("last") or 0) < t - FAILURE_MEMORY:
        store.delete(LoginLock, key)
        return LockState(0, 0, expired)
    after_lock = int(doc.get("lock_count") or failures) + 1 if until else 0
    return LockState(0, failures, expired, after_lock)


def begin_attempt(store: AuthStore, key: str) -> int:
    """Count a login attempt before its password or code is checked, as the failure it will be unless it
    succeeds; returns its number in the row. Attempts sent at once all pass `check_lock` before any of them
    fails, so a count made after the check let a burst try many more than LOCK_AFTER; counted first, each
    gets its own number (one findAndModify) and `may_check` lets only the allowed ones be checked."""
    _prune(store)
    coll = store.collection(LoginLock)
    update = {"$inc": {"failures": 1}, "$set": {"last": time.time()}}
    try:
        doc = coll.find_one_and_update({"_id": key}, update, upsert=True, return_document=ReturnDocument.AFTER)
    except DuplicateKeyError:  # two first attempts at once: the other inserted it
        doc = coll.find_one_and_update({"_id": key}, update, return_document=ReturnDocument.AFTER)
    return int(doc.get("failures") or 0)


def may_check(state: LockState, number: int) -> bool:
    """Whether the attempt with this number in the row may have its password or code checked: the first
    LOCK_AFTER, and after each lock has run out the one numbered next after the failure that set it (`state`
    is what check_lock saw before it; attempts counted meanwhile are being checked, and get no turn)."""
    return number <= LOCK_AFTER or number == state.after_lock


def record_failure(store: AuthStore, key: str, failures: int) -> LockState:
    """The attempt numbered `failures` (begin_attempt) failed: lock the number when that many lock it; returns
    the seconds it is now locked for (0: not locked)."""
    seconds = lock_seconds(failures)
    if seconds:
        store.collection(LoginLock).update_one(
            {"_id": key}, {"$max": {"locked_until": time.time() + seconds, "lock_count": failures}})
    return LockState(seconds, failures)


def clear_failures(store: AuthStore, key: str) -> None:
    """After a successful login: the count starts again."""
    store.delete(LoginLock, key)


def unlock(store: AuthStore, key: str) -> LockState:
    """Lift the lock and forget the failures (an operator's `ehc users unlock`); returns what there was."""
    before = store.collection(LoginLock).find_one_and_delete({"_id": key})
    if before is None:
        return LockState()
    left = float(before.get("locked_until") or 0) - time.time()
    return LockState(math.ceil(left) if left > 0 else 0, int(before.get("failures") or 0))


def _prune(store: AuthStore) -> None:
    """Now and then, drop the counts of numbers that have not failed for FAILURE_MEMORY."""
    global _last_prune
    if time.monotonic() - _last_prune < PRUNE_EVERY:
        return
    _last_prune = time.monotonic()
    t = time.time()
    store.collection(LoginLock).delete_many({"last": {"$lt": t - FAILURE_MEMORY}, "locked_until": {"$lt": t}})
