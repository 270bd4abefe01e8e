"""The audit trail (DESIGN §5): every access as a FHIR AuditEvent (IHE BALP shape), in an SM3 hash chain.

- events.py   AccessRecord -> AuditEvent resource (pure)
- chain.py    canonical JSON, SM3 digests and links, verify(db)
- writer.py   storing events on the request path (one insert; one more, the intent, before a write)
- sealer.py   numbering and linking stored events into the chain, recovering what a dead process left
- plugin.py   init_app: the access listener, request hooks, the background sealing thread
docs/audit.md explains the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.audit.sealer import Sealer
    from app.audit.writer import AuditWriter
    from app.services import Services


def build_trail(svc: Services, intent_grace: float = 60.0) -> tuple[AuditWriter, Sealer]:
    """The writer and sealer of a node (also used by `ehc audit` without the web app)."""
    from app.audit.events import Node
    from app.audit.sealer import Sealer
    from app.audit.writer import AuditWriter

    writer = AuditWriter(svc.handle.db, svc.repo, Node(svc.settings.province, svc.settings.base_url))
    sealer = Sealer(svc.handle.db, svc.repo, svc.leases, writer, intent_grace=intent_grace)
    return writer, sealer
