"""Resident accounts: phone + password, and one-time SMS codes.

The phone number is never stored in clear: the account's key is an HMAC of it (app.auth.keys), with a
masked hint for display. Passwords are hashed with werkzeug (scrypt). An SMS code is six digits, lives
five minutes, is used once and allows five attempts; it goes through the configured sender
(`svc.extensions["sms_sender"]`, a callable(phone, text)) or, in development, to the log.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable

from werkzeug.security import check_password_hash, generate_password_hash

from app.auth.keys import AuthKeys
from app.auth.models import AuthStore, ResidentAccount, SmsCode, digest, now

log = logging.getLogger("ehc.auth")
PHONE = re.compile(r"^1[3-9]\d{9}$")
SMS_TTL = 300
SMS_ATTEMPTS = 5
_DUMMY_HASH = generate_password_hash("not a password")
Sender = Callable[[str, str], None]


def normalize_phone(phone: str) -> str:
    """A mainland mobile number as 11 digits; ValueError when it is not one."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not PHONE.match(digits):
        raise ValueError(f"not a mainland mobile number: {mask(digits)}")
    return digits


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


def find_account(store: AuthStore, keys: AuthKeys, phone: str) -> ResidentAccount | None:
    try:
        key = keys.phone_key(normalize_phone(phone))
    except ValueError:
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
        store.set(ResidentAccount, account.phone_key, failed=(account.failed or 0) + 1)
        return None
    return account


def send_sms_code(store: AuthStore, keys: AuthKeys, phone: str, sender: Sender | None) -> bool:
    """Issue a code when an account has this phone (answering the same either way to the caller)."""
    account = find_account(store, keys, phone)
    if account is None:
        return False
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
