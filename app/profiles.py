"""Where the conformance resources are: `fhir_profiles/` beside the package in a source tree (and an editable
install), or `app/_profiles/` inside an installed wheel (setup.py copies them there at build time)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def find_profiles_dir() -> Path:
    for candidate in (_PACKAGE / "_profiles", _PACKAGE.parent / "fhir_profiles"):
        if (candidate / "resource-types.json").is_file():
            return candidate
    raise FileNotFoundError(f"fhir_profiles not found in {_PACKAGE / '_profiles'} or "
                            f"{_PACKAGE.parent / 'fhir_profiles'}: reinstall the package (pip install .)")


PROFILES_DIR = find_profiles_dir()
