"""This node's federation key: an EC P-384 key (ES384, the algorithm the OAuth server accepts for client
assertions) in EHC_DATA_DIR/federation/node-key.json, mode 0600, created atomically on first use.

Its fingerprint is the RFC 7638 JWK thumbprint (SHA-256, base64url), also used as its kid. An operator reads
it with `ehc nodes key` on one node and compares it with what `ehc nodes add` / `ehc nodes list` prints on the
other (docs/federation.md).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from app.keyring import write_key_once

ALG = "ES384"


class NodeKey:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "federation" / "node-key.json"

    @cached_property
    def key(self) -> ECKey:
        if not self.path.exists():
            new = ECKey.generate_key("P-384", {"alg": ALG, "use": "sig"})
            new.ensure_kid()
            write_key_once(self.path, json.dumps(new.as_dict(private=True)).encode())
        key = ECKey.import_key(json.loads(self.path.read_text(encoding="utf-8")))
        key.ensure_kid()
        return key

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def fingerprint(self) -> str:
        return str(self.key.thumbprint())

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}


def jwks_fingerprint(jwks: dict[str, Any]) -> str:
    """The thumbprint of the first key of a public JWKS (what the other node's `ehc nodes key` shows)."""
    return str(ECKey.import_key(jwks["keys"][0]).thumbprint())
