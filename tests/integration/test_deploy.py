"""Deployment: docker-compose validates (MongoDB 7, the server, the nginx TLS front), the self-signed certificate
of the TLS front, and a regular (non-editable) install that carries fhir_profiles inside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compose_plugin() -> bool:
    """docker compose v2 is a plugin of the docker client; a machine may have the client without it."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="no docker compose plugin on this machine "
                                                  "(test_compose_file_structure still checks the file)")
def test_docker_compose_config_validates():
    proc = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "EHC_BASE_URL": ""})
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    services = config["services"]
    assert services["mongo"]["image"] == "mongo:7"
    assert services["app"]["environment"]["EHC_MONGODB_URI"] == "mongodb://mongo:27017/ehc"
    assert services["app"]["environment"]["EHC_BASE_URL"] == "https://localhost:8443/fhir"
    assert [p["target"] for p in services["tls"]["ports"]] == [443]
    assert services["tls"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert "ports" not in services["app"]  # plain http stays inside the compose network
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_pass http://app:8080" in nginx and "$request_uri" not in nginx and "$args" not in nginx


def test_compose_file_structure():
    """What the operator starts, read as YAML (runs where docker compose is not installed)."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["mongo"]["image"] == "mongo:7"
    assert {"app", "tls", "certs"} <= set(services)
    assert "ports" not in services["app"]
    assert "443" in str(services["tls"]["ports"])


def test_self_signed_certificate_for_the_tls_front(tmp_path):
    from cryptography import x509

    from app.ops.tls import make_self_signed

    assert make_self_signed(tmp_path, ["localhost", "ehc.local"])
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "ehc.local"]
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "cert.pem").read_bytes()
    assert not make_self_signed(tmp_path, ["localhost"])  # a second start keeps the pair
    assert (tmp_path / "cert.pem").read_bytes() == before


@pytest.mark.slow
def test_regular_install_carries_the_profiles(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("ehc_fhir-*.whl"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    probe = ("from app.profiles import PROFILES_DIR; from app.services import load_resource_types; "
             "from app.mpi.identifiers import default_registry; "
             "print(PROFILES_DIR); print(len(load_resource_types(PROFILES_DIR))); "
             "print(len(default_registry().documents))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr
    where, types, documents = run.stdout.split()
    assert Path(where) == site / "app" / "_profiles"
    assert int(types) > 5 and int(documents) > 10
