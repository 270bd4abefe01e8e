"""A self-signed TLS certificate for local trials of the docker-compose setup (the nginx front).

`python -m app.ops.tls DIR [HOSTNAME ...]` writes DIR/cert.pem and DIR/key.pem (0600) unless they exist:
an ECDSA P-256 key and a certificate valid for a year for the names given (default localhost) and 127.0.0.1.
Replace them with a real certificate for anything but a trial.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path


def make_self_signed(directory: Path, hostnames: list[str]) -> bool:
    """Write the pair unless present; True when written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ehc-fhir local trial (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    written = make_self_signed(Path(argv[0]), argv[1:] or ["localhost"])
    print(f"{'wrote' if written else 'kept'} {argv[0]}/cert.pem and key.pem")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
