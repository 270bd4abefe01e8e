"""Server secrets of the auth layer, kept in EHC_DATA_DIR/auth (created on first use, mode 0600):

- secret.key: 32 random bytes; signs the login session cookie and keys the phone-number HMAC;
- oidc-rs256.pem: the RSA key that signs OpenID Connect id_tokens (RS256), published at /oauth/jwks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from app.keyring import private_file, write_key_once


class AuthKeys:
    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "auth"

    @cached_property
    def secret(self) -> bytes:
        path = self.dir / "secret.key"
        if not path.exists():
            write_key_once(path, secrets.token_bytes(32))  # workers booting together: the first one's wins
        private_file(path)
        return path.read_bytes()

    def phone_key(self, phone: str) -> str:
        """The account key of a phone number (a blind index: HMAC, not the number)."""
        norm = "".join(ch for ch in phone if ch.isdigit())
        return hmac.new(self.secret, b"phone:" + norm.encode(), hashlib.sha256).hexdigest()

    @cached_property
    def signing_key(self) -> RSAKey:
        path = self.dir / "oidc-rs256.pem"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            write_key_once(path, pem)
        private_file(path)
        jwk = RSAKey.import_key(path.read_bytes())
        jwk.ensure_kid()
        return jwk

    def public_jwks(self) -> dict[str, Any]:
        pub = self.signing_key.as_dict(private=False)
        return {"keys": [{**pub, "use": "sig", "alg": "RS256"}]}
