"""Packaging is in pyproject.toml; this only copies fhir_profiles/ into the built package as app/_profiles, so
`pip install .` (not editable) finds the conformance resources (app/profiles.py)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithProfiles(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "fhir_profiles"
        target = Path(self.build_lib) / "app" / "_profiles"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildWithProfiles})
