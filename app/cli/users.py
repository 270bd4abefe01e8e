"""`ehc users add|unbind|unlock`: resident accounts (phone + password) and their bound patients (一人绑定多人).

The first --patient is the account holder (SELF); each further one is a relative, written ID or
ID:RELATION with RELATION a v3 RoleCode for what the holder is to that patient (MTH, FTH, CHILD, SPS,
GUARD ...; default FAMMEMB). Relatives are recorded as a RelatedPerson and a Consent.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from app.auth.plugin import AuthState
    from app.services import Services


def _services() -> tuple[Services, AuthState]:
    from app.auth.plugin import auth_state
    from app.cli.common import reach_database
    from app.config import load_settings
    from app.services import build_services

    settings = load_settings()
    reach_database(settings)  # one clear line when the database is away
    svc = build_services(settings)
    return svc, auth_state(svc)


@click.group()
def users() -> None:
    """Resident accounts."""


@users.command("add")
@click.option("--phone", required=True)
@click.option("--password-stdin", is_flag=True,
              help="read the password from the first line of standard input (scripts); otherwise it is asked twice")
@click.option("--password", default=None, help="the password itself (visible to other users of the machine: prefer "
              "--password-stdin)")
@click.option("--patient", "patients", multiple=True, metavar="ID[:RELATION]")
def add(phone: str, password_stdin: bool, password: str | None, patients: tuple[str, ...]) -> None:
    """Create an account and bind patients to it."""
    from app.auth.accounts import create_account
    from app.auth.bindings import bind

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        try:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        except click.Abort:  # no terminal and nothing on standard input
            raise click.UsageError("no password: give it on standard input with --password-stdin") from None
    if not password:
        raise click.UsageError("the password is empty")
    svc, st = _services()
    try:
        account = create_account(st.store, st.keys, phone, password)
        bound = []
        for i, item in enumerate(patients):
            pid, _, rel = item.partition(":")
            b = bind(svc, st.store, account, pid, "SELF" if i == 0 else (rel or "FAMMEMB"))
            bound.append({"patient": pid, "relationship": b.relationship, "consent": b.consent,
                          "related_person": b.related_person})
    except ValueError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    finally:
        svc.handle.close()
    click.echo(json.dumps({"account": account.phone_hint, "fhirUser": account.fhir_user, "patients": bound},
                          ensure_ascii=False, indent=2))


@users.command("unbind")
@click.option("--phone", required=True)
@click.option("--patient", "patient_id", required=True)
def unbind_cmd(phone: str, patient_id: str) -> None:
    """Undo a binding (its Consent becomes inactive)."""
    from app.auth.accounts import find_account
    from app.auth.bindings import unbind

    svc, st = _services()
    try:
        account = find_account(st.store, st.keys, phone)
        if account is None:
            click.echo("error: no such account", err=True)
            sys.exit(2)
        unbind(svc, st.store, account, patient_id)
    finally:
        svc.handle.close()
    click.echo(json.dumps({"account": account.phone_hint, "unbound": patient_id}))


@users.command("unlock")
@click.option("--phone", required=True)
def unlock_cmd(phone: str) -> None:
    """Lift the login lock of a phone number (after failed logins) and reset its count; audited."""
    import getpass

    from app.audit import build_trail
    from app.auth.accounts import lock_key, normalize_phone, unlock
    from app.auth.models import ResidentAccount
    from app.core.access import AccessRecord, Principal

    try:
        normalize_phone(phone)
    except ValueError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    svc, st = _services()
    try:
        writer, _ = build_trail(svc)  # the command is audited like the server: the trail seals it later

        def audit(record: AccessRecord) -> None:
            writer.write(record)

        svc.access_listeners.append(audit)
        key = lock_key(st.keys, phone)
        was = unlock(st.store, key)
        account = st.store.get(ResidentAccount, key)
        text = (f"login unlocked by an operator ({was.failures} failed logins"
                + (f", {was.locked_for} s of lock left)" if was.locked_for else ")"))
        svc.record_access(AccessRecord("unlock", None, [], "0", 200,
                                       Principal(client_id="ehc-cli", user=f"operator:{getpass.getuser()}"),
                                       description=text,
                                       patient_ids=list(account.patients[:1]) if account is not None else []))
    finally:
        svc.handle.close()
    click.echo(json.dumps({"unlocked": was.locked_for > 0, "failures": was.failures,
                           "locked_seconds_left": was.locked_for}))


COMMANDS = [users]
