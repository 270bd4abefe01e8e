"""Resident login found weak by the attack of issue 7 (finding 19): the per-phone limit is counted on the
normalised number, whatever way it is written; failed logins lock the number with growing back-off, kept in
the database (every worker process sees it), answered the same for numbers without an account; the end of a
lock, by time or by `ehc users unlock`, is in the audit trail."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from app.auth import accounts, views
from app.auth.plugin import auth_state
from app.auth.views import TOO_MANY, WRONG
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    REDIRECT,
    account,
    bearer,
    csrf_of,
    patient,
    register,
    stored_token,
)

PASSWORD = "correct horse 19"
KNOWN = "13800138019"  # these three have accounts
BACKOFF = "13800138029"
OPERATOR = "13800138039"
MSG = re.compile(r'<p class="msg">(.*?)</p>', re.S)


@pytest.fixture(scope="module")
def world(svc):
    me = patient(svc, "钱", "七")
    for phone in (KNOWN, BACKOFF, OPERATOR):
        account(svc, phone, PASSWORD, me)
    app = register(svc, "launch/patient patient/*.rs", redirect_uris=[REDIRECT], public=True, name="健康 App")
    params = {"response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT,
              "scope": "launch/patient patient/*.rs", "state": "s", "aud": "http://localhost/fhir",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM", "code_challenge_method": "S256"}
    return {"me": me, "path": "/oauth/authorize?" + urlencode(params)}


@pytest.fixture(scope="module")
def other_process(auth_settings):
    """A second app on the same database, as another worker process: nothing shared but the database."""
    from app import create_app

    other = create_app(auth_settings)
    other.testing = True
    yield other
    other.extensions["ehc"].handle.close()


@pytest.fixture()
def fast_locks(monkeypatch):
    monkeypatch.setattr(accounts, "LOCK_BASE_SECONDS", 2)  # 2 s, 4 s, 8 s ... instead of 1 min, 2 min ...
    monkeypatch.setattr(accounts, "LOCK_MAX_SECONDS", 60)


def attempt(flask_app, world, phone: str, password: str, addr: str = "127.0.0.1") -> str:
    """One login from a fresh browser: the message the page shows, or "logged in"."""
    client = flask_app.test_client()
    env = {"REMOTE_ADDR": addr}
    page = client.get(world["path"], environ_base=env)
    assert page.status_code == 200 and 'name="phone"' in page.text, page.text
    r = client.post(world["path"], data={"csrf": csrf_of(page.text), "phone": phone, "password": password,
                                         "step": "login"}, environ_base=env)
    assert r.status_code == 200, r.text
    if 'name="phone"' not in r.text:
        return "logged in"
    found = MSG.search(r.text)
    assert found, r.text
    return found.group(1).strip()


def locked(message: str) -> bool:
    return "locked" in message


def test_per_phone_limit_counts_the_normalised_number(auth_app, world):
    formats = ["13700137001", "137-0013-7001", "+86 137 0013 7001", "0086 (137) 0013-7001", "+86-137-0013-7001"]
    limit = auth_state(auth_app.extensions["ehc"]).login_limiter.limit
    saved = limit.rate, limit.burst
    limit.rate, limit.burst = 0.001, 3
    try:  # each attempt from its own address: only the per-phone bucket can stop them
        got = [attempt(auth_app, world, phone, "not the password", addr=f"10.9.0.{i + 1}")
               for i, phone in enumerate(formats)]
    finally:
        limit.rate, limit.burst = saved
    assert got == [WRONG] * 3 + [TOO_MANY] * 2
    assert accounts.phone_bucket("0086 (137) 0013-7001") == accounts.phone_bucket("+86 137-0013-7001") == "13700137001"


def test_a_number_typed_in_full_width_digits_is_the_same_number(auth_app, svc, world):
    """Chinese input methods type full-width digits (１３８...): the login finds the account, and the per-phone
    count is the number's. Before, str.isdigit took them as they were: the account was never found, and each
    way of writing the number had a count of its own."""
    phone = "13800138049"
    account(svc, phone, PASSWORD, world["me"])
    wide = phone.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    assert attempt(auth_app, world, wide, PASSWORD) == "logged in"
    assert accounts.phone_bucket(wide) == accounts.phone_bucket("+86 " + wide[:3] + "-" + phone[3:]) == phone


def test_failed_logins_lock_alike_for_unknown_numbers(auth_app, world):
    unknown = "13600136019"  # no account
    for phone in (KNOWN, unknown):
        got = [attempt(auth_app, world, phone, "wrong password") for _ in range(accounts.LOCK_AFTER)]
        assert got[:-1] == [WRONG] * (accounts.LOCK_AFTER - 1)
        assert got[-1] == views.locked_message(60)  # the fifth failure locks, for a minute
    # locked: even the right password is refused, and a number without an account is answered the same
    first = attempt(auth_app, world, KNOWN, PASSWORD)
    assert locked(first)
    assert attempt(auth_app, world, unknown, PASSWORD) == first
    assert attempt(auth_app, world, "138 0013 8019", PASSWORD) == first  # another way of writing it


def test_the_lock_grows_with_each_further_failure(auth_app, world, fast_locks):
    for _ in range(accounts.LOCK_AFTER):
        attempt(auth_app, world, BACKOFF, "wrong password")
    assert locked(attempt(auth_app, world, BACKOFF, PASSWORD))
    time.sleep(2.2)  # the first lock (2 s) has ended
    assert attempt(auth_app, world, BACKOFF, "wrong again") != "logged in"  # the sixth failure
    t = time.monotonic()  # locks again, twice as long: 4 s
    time.sleep(2.5)
    assert locked(attempt(auth_app, world, BACKOFF, PASSWORD))  # a 2 s lock would be over
    time.sleep(max(0.0, 4.3 - (time.monotonic() - t)))
    assert attempt(auth_app, world, BACKOFF, PASSWORD) == "logged in"
    # a successful login starts the count again
    assert attempt(auth_app, world, BACKOFF, "one typo") == WRONG


def test_the_lock_holds_across_processes(auth_app, other_process, world):
    phone = "13500135019"
    got = [attempt(auth_app, world, phone, "guess 1"), attempt(other_process, world, phone, "guess 2"),
           attempt(auth_app, world, phone, "guess 3"), attempt(other_process, world, phone, "guess 4"),
           attempt(auth_app, world, phone, "guess 5")]
    assert got[:4] == [WRONG] * 4 and locked(got[4])  # one count for both processes
    assert locked(attempt(other_process, world, phone, "guess 6"))


def test_guesses_sent_at_once_get_no_more_checks_than_one_after_the_other(auth_app, other_process, world,
                                                                           monkeypatch):
    """Twelve guesses of one number sent at once, to two processes: only LOCK_AFTER passwords are checked, the
    rest are refused as locked, and the number is locked afterwards. Before, every guess passed the lock check
    before any had failed, so a burst had each of its guesses checked."""
    checked: list[str] = []
    real = accounts.check_password_hash

    def counting(pwhash: str, password: str) -> bool:
        checked.append(password)
        return real(pwhash, password)

    monkeypatch.setattr(accounts, "check_password_hash", counting)
    phone = "13500135029"
    account(auth_app.extensions["ehc"], phone, PASSWORD, world["me"])
    barrier = threading.Barrier(12)

    def guess(i: int) -> str:
        flask_app = auth_app if i % 2 else other_process
        client = flask_app.test_client()
        page = client.get(world["path"])
        barrier.wait(30)
        r = client.post(world["path"], data={"csrf": csrf_of(page.text), "phone": phone,
                                             "password": f"guess {i}", "step": "login"})
        found = MSG.search(r.text)
        return found.group(1).strip() if found else r.text

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(guess, range(12)))
    assert len(checked) == accounts.LOCK_AFTER, (len(checked), answers)
    assert answers.count(WRONG) == accounts.LOCK_AFTER - 1 and sum(map(locked, answers)) == 12 - answers.count(WRONG)
    assert locked(attempt(auth_app, world, phone, PASSWORD))


def test_unlocking_is_audited_by_time_and_by_operator(auth_app, svc, world, auth_settings, monkeypatch, fast_locks):
    for _ in range(accounts.LOCK_AFTER):
        attempt(auth_app, world, OPERATOR, "wrong password")
    assert locked(attempt(auth_app, world, OPERATOR, PASSWORD))
    # the operator lifts the lock
    from app.cli import main

    monkeypatch.setenv("EHC_MONGODB_URI", auth_settings.mongodb_uri)
    monkeypatch.setenv("EHC_DATA_DIR", str(auth_settings.data_dir))
    out = CliRunner().invoke(main, ["users", "unlock", "--phone", "+86 138-0013-8039"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["unlocked"] is True and result["failures"] == accounts.LOCK_AFTER
    assert attempt(auth_app, world, OPERATOR, PASSWORD) == "logged in"
    bad = CliRunner().invoke(main, ["users", "unlock", "--phone", "12345"])
    assert bad.exit_code == 2 and "not a mainland mobile number" in bad.output
    # a lock that runs out
    for _ in range(accounts.LOCK_AFTER):
        attempt(auth_app, world, OPERATOR, "wrong password")
    time.sleep(2.2)
    assert attempt(auth_app, world, OPERATOR, PASSWORD) == "logged in"
    # both ends of a lock, and the lock itself, are among the events of the resident's record
    token = stored_token(svc, "system/AuditEvent.rs")
    r = auth_app.test_client().get(f"/fhir/AuditEvent?patient=Patient/{world['me']}&_count=200",
                                   headers=bearer(token))
    assert r.status_code == 200, r.text
    texts = [e["resource"].get("outcomeDesc", "") for e in r.json["entry"] if e["search"]["mode"] == "match"]
    assert any("unlocked by an operator" in t for t in texts), texts
    assert any("login lock ended" in t for t in texts), texts
    assert any("locked for" in t for t in texts), texts
    assert OPERATOR not in r.text and "138-0013-8039" not in r.text  # no phone number in the trail
