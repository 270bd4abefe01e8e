"""The client smoke matrix: third-party FHIR clients against a running server, over every writable type.

Each client runs the same steps for each type with its own API (see docs/conformance.md, "Client smoke matrix"):

    create, read, update, vread, history, search, transaction, paging, compartment, xml-read, xml-create, delete

and reports one cell per (type, step): "ok", "n/a: <why>" where the client or the type has no such thing, or
what went wrong. The Python clients (fhirpy, fhirclient: tests/client_matrix_python.py) run in the test process;
HAPI FHIR's generic client (tools/clientmatrix, Java) and fhir-kit-client (tools/clientmatrix/fhir-kit, node)
each run as one process that reads a spec file (base URL, token, patient, one minimal instance per type) and
prints the cells as one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "fhir_profiles"
TOOL = ROOT / "tools" / "clientmatrix"
HAPI_CLASSES = TOOL / "target" / "classes" / "ehc" / "ClientMatrix.class"
HAPI_SOURCE = TOOL / "src" / "main" / "java" / "ehc" / "ClientMatrix.java"
CLASSPATH = TOOL / "target" / "classpath.txt"
FHIR_KIT = TOOL / "fhir-kit"
MVN = ["mvn", "-q", "-B", "compile", "dependency:build-classpath", f"-Dmdep.outputFile={CLASSPATH}"]
STEPS = ("create", "read", "update", "vread", "history", "search", "transaction", "paging", "compartment",
         "xml-read", "xml-create", "delete")
TYPES = json.loads((PROFILES / "resource-types.json").read_text(encoding="utf-8"))["resourceTypes"]
WRITABLE = sorted(t for t, conf in TYPES.items() if "create" in conf["interactions"])
Cells = dict[str, dict[str, str]]
# Types of the patient compartment whose minimal instance does not name the patient (fhir_factory links only
# `subject` and `patient`): the element each names it through here, so that every compartment search has a member.
COMPARTMENT_LINKS: dict[str, Callable[[dict[str, Any], dict[str, str]], None]] = {
    "Appointment": lambda r, ref: r["participant"][0].update(actor=ref),
    "AppointmentResponse": lambda r, ref: r.update(actor=ref),
    # the server searches one compartment parameter per type (app/auth/compartment.py: policy-holder for
    # Coverage), so a Coverage that names the patient as beneficiary only is not found: docs/conformance.md
    "Coverage": lambda r, ref: r.update(beneficiary=ref, policyHolder=ref),
    "EnrollmentRequest": lambda r, ref: r.update(candidate=ref),
    "Group": lambda r, ref: r.update(type="person", member=[{"entity": ref}]),
    "Person": lambda r, ref: r.update(link=[{"target": ref}]),
    "Provenance": lambda r, ref: r.update(target=[ref]),
    "ResearchSubject": lambda r, ref: r.update(individual=ref),
    "Schedule": lambda r, ref: r.update(actor=[ref]),
    "SupplyRequest": lambda r, ref: r.update(deliverTo=ref),
    "Task": lambda r, ref: r.update({"for": ref}),
}


def compartment_params() -> dict[str, list[str]]:
    doc = json.loads((PROFILES / "CompartmentDefinition" / "patient.json").read_text(encoding="utf-8"))
    return {r["code"]: r.get("param", []) for r in doc["resource"] if r.get("param")}


def spec(base: str, token: str, patient_id: str) -> dict[str, Any]:
    """What every client runs: for each writable type, a minimal instance that names the patient where the type
    can, whether the type is in the patient compartment, and whether the created resources belong to it."""
    from app.core.fhirjson import dumps
    from tests.fhir_factory import minimal, patient_linked

    comp = compartment_params()
    types = []
    for rtype in WRITABLE:
        linked = patient_linked(rtype)
        resource = json.loads(dumps(minimal(rtype, patient_id)))
        if rtype == "Bundle":  # a stored Bundle is a collection or a document; a batch is posted to the base
            resource["type"] = "collection"
        if rtype in COMPARTMENT_LINKS:
            COMPARTMENT_LINKS[rtype](resource, {"reference": f"Patient/{patient_id}"})
        types.append({
            "type": rtype,
            "resource": resource,
            "compartment": rtype in comp,
            # Patient/{id}/Patient is the patient itself; other types hold the created resources when they name
            # the patient through one of their compartment parameters
            "member": rtype in COMPARTMENT_LINKS or (
                rtype != "Patient" and linked is not None and bool({linked, "patient"} & set(comp.get(rtype, [])))),
        })
    return {"base": base, "token": token, "patient": patient_id, "types": types}


# -- building and running the external clients --------------------------------------------------------------

def build_hapi() -> bool:
    """Compile tools/clientmatrix with Maven (offline from ~/.m2 once cached) when stale; False without Java."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        return False
    fresh = HAPI_CLASSES.exists() and CLASSPATH.exists() and HAPI_CLASSES.stat().st_mtime >= max(
        HAPI_SOURCE.stat().st_mtime, (TOOL / "pom.xml").stat().st_mtime)
    if not fresh:
        offline = subprocess.run([*MVN[:3], "-o", *MVN[3:]], cwd=TOOL, capture_output=True, text=True)
        if offline.returncode != 0:
            subprocess.run(MVN, cwd=TOOL, check=True, capture_output=True, text=True)
    return True


def build_fhir_kit() -> bool:
    """`npm ci` of tools/clientmatrix/fhir-kit (the exact versions of its package-lock.json) when missing or
    older than the lock file; npm's own cache makes a reinstall fast. False without node and npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return False
    stamp = FHIR_KIT / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < (FHIR_KIT / "package-lock.json").stat().st_mtime:
        subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=FHIR_KIT, check=True, capture_output=True, text=True)
    return True


def build() -> None:
    """Called by scripts/test before the suite: both external clients, so that the tests only run them."""
    build_hapi()
    build_fhir_kit()


def _run(cmd: list[str], spec_doc: dict[str, Any], workdir: Path, timeout: float) -> Cells:
    path = workdir / "client-matrix-spec.json"
    path.write_text(json.dumps(spec_doc), encoding="utf-8")
    proc = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, LC_ALL="C.UTF-8"))
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr[-3000:]}")
    cells: Cells = json.loads(proc.stdout)
    return cells


def run_hapi(spec_doc: dict[str, Any], workdir: Path, timeout: float = 900) -> Cells:
    cp = f"{TOOL / 'target' / 'classes'}:{CLASSPATH.read_text().strip()}"
    return _run(["java", "-XX:TieredStopAtLevel=1", "-Xss4m", "-cp", cp, "ehc.ClientMatrix"], spec_doc, workdir,
                timeout)


def run_fhir_kit(spec_doc: dict[str, Any], workdir: Path, timeout: float = 900) -> Cells:
    return _run(["node", str(FHIR_KIT / "matrix.js")], spec_doc, workdir, timeout)


# -- the shared rules of each step, for the Python drivers ----------------------------------------------------

def run_steps(spec_doc: dict[str, Any], steps: dict[str, Callable[..., str]]) -> Cells:
    """Run the steps of one client in order for each type. A step function takes (state, entry) and returns "ok"
    or "n/a: ..."; an exception is the cell's failure. state carries the ids between the steps."""
    out: Cells = {}
    for entry in spec_doc["types"]:
        state: dict[str, Any] = {}
        cells: dict[str, str] = {}
        for step in STEPS:
            if step != "create" and "id" not in state and step not in ("xml-create",):
                cells[step] = "not run: create failed"
                continue
            try:
                cells[step] = steps[step](state, entry)
            except Exception as exc:  # the cell records what went wrong, the run goes on
                cells[step] = f"{type(exc).__name__}: {str(exc)[:300]}"
        out[entry["type"]] = cells
    return out


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def failures(cells: Cells) -> list[str]:
    """'type step: message' for every cell that is neither ok nor n/a, and for types or steps missing."""
    problems = [f"{rtype}: no cells" for rtype in WRITABLE if rtype not in cells]
    for rtype, row in sorted(cells.items()):
        for step in STEPS:
            value = row.get(step, "missing")
            if value != "ok" and not value.startswith("n/a: "):
                problems.append(f"{rtype} {step}: {value}")
    return problems


def not_supported(cells: Cells) -> dict[str, set[str]]:
    """step -> the distinct n/a reasons (for the summary the tests check against the docs)."""
    out: dict[str, set[str]] = {}
    for row in cells.values():
        for step, value in row.items():
            if value.startswith("n/a: "):
                out.setdefault(step, set()).add(value[5:])
    return out
