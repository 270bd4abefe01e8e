"""The HL7 FHIR R4 instance validator (HAPI FHIR 8.4.0 FhirInstanceValidator, tools/validator) for tests.

`HL7Validator.start()` builds tools/validator with Maven when its classes are missing or older than the
source (offline from ~/.m2 when the dependencies are cached, otherwise from Maven Central), then starts one
JVM that loads the R4 core and the conformance resources of fhir_profiles. `validate(path)` and
`convert(path)` talk to it over stdin/stdout (one command, JSON lines, END).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "validator"
CLASSES = TOOL / "target" / "classes" / "ehc" / "ValidatorMain.class"
CLASSPATH = TOOL / "target" / "classpath.txt"
SOURCE = TOOL / "src" / "main" / "java" / "ehc" / "ValidatorMain.java"
BUILD = ["mvn", "-q", "-B", "compile", "dependency:build-classpath",
         f"-Dmdep.outputFile={CLASSPATH}"]


def build() -> None:
    fresh = CLASSES.exists() and CLASSPATH.exists() and CLASSES.stat().st_mtime >= max(
        SOURCE.stat().st_mtime, (TOOL / "pom.xml").stat().st_mtime)
    if fresh:
        return
    if shutil.which("mvn") is None or shutil.which("java") is None:
        return  # test_hl7_validator.py is skipped (and says so) without Java 17 and Maven
    offline = subprocess.run([*BUILD[:3], "-o", *BUILD[3:]], cwd=TOOL, capture_output=True, text=True)
    if offline.returncode != 0:
        subprocess.run(BUILD, cwd=TOOL, check=True, capture_output=True, text=True)


class HL7Validator:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, profiles: Path = ROOT / "fhir_profiles") -> HL7Validator:
        build()
        cp = f"{TOOL / 'target' / 'classes'}:{CLASSPATH.read_text().strip()}"
        proc = subprocess.Popen(["java", "-Xss4m", "-cp", cp, "ehc.ValidatorMain", str(profiles)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, encoding="utf-8")
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready.startswith("READY"):
            proc.kill()
            raise RuntimeError(f"the validator did not start: {ready!r}")
        return cls(proc)

    def _ask(self, command: str) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        out: list[dict[str, Any]] = []
        for line in self.proc.stdout:
            if line.strip() == "END":
                return out
            out.append(json.loads(line))
        raise RuntimeError("the validator stopped")

    def validate(self, path: Path) -> list[dict[str, Any]]:
        """One {"file", "issues": [{"severity", "location", "message"}]} per file (a folder: all of them)."""
        return self._ask(f"validate {path}")

    def convert(self, path: Path) -> dict[str, Any]:
        """HAPI's strict parser on the file (JSON or XML): {"file", "json": <HAPI's JSON>} or {"error"}."""
        return self._ask(f"convert {path}")[0]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def errors(results: list[dict[str, Any]]) -> list[str]:
    """'file: location: message' for every error or fatal issue."""
    return [f"{Path(r['file']).name}: {i['location']}: {i['message']}" for r in results
            for i in r.get("issues", []) if i["severity"] in ("error", "fatal")] + [
        f"{r['file']}: {r['error']}" for r in results if "error" in r]
