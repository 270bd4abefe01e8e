"""The audit trail: every access as a FHIR AuditEvent (IHE BALP shape), in an SM3 hash chain.

- events.py       AccessRecord -> AuditEvent resource (pure)
- chain.py        canonical JSON, SM3 digests and links, verify(db) (chain, checkpoints, patient index)
- writer.py       audit records on the request path (time-ordered ids, numbers scrubbed)
- commit.py       group commit: the records of concurrent requests share one insert (or one spool append)
- spool.py        records durable on the node's disk first, shipped to the database in large batches
- sealer.py       numbering and linking stored events into the chain, recovering what a dead process left
- checkpoints.py  SM2-signed checkpoints of the chain head in EHC_DATA_DIR, published at /ehc/audit/checkpoints
- plugin.py       init_app: the access listener, request hooks, the background sealing thread, the endpoint
docs/audit.md explains the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.audit.checkpoints import Checkpoints, NodeKeys
    from app.audit.sealer import Sealer
    from app.audit.writer import AuditWriter
    from app.services import Services


def chain_name(svc: Services) -> str:
    """The name checkpoints give this node's chain: its province and database."""
    return f"{svc.settings.province}/{svc.handle.db.name}"


def checkpoints_for(svc: Services, keys: NodeKeys, interval: float | None = None) -> Checkpoints:
    from app.audit.checkpoints import FILE_NAME, INTERVAL, Checkpoints

    return Checkpoints(svc.settings.data_dir / FILE_NAME, chain_name(svc), keys,
                       INTERVAL if interval is None else interval)


def build_trail(svc: Services, intent_grace: float = 60.0, *, keys: NodeKeys | None = None,
                checkpoint_interval: float | None = None, **sealer: Any) -> tuple[AuditWriter, Sealer]:
    """The writer and sealer of a node (also used by `ehc audit` without the web app). With the node's
    signing keys, the sealer also writes signed checkpoints."""
    from app.audit.chain import PENDING
    from app.audit.commit import GroupCommitter
    from app.audit.events import Node
    from app.audit.sealer import Sealer
    from app.audit.spool import Spool, spool_dir
    from app.audit.writer import AuditWriter

    pending = svc.handle.db[PENDING]
    spool = Spool(spool_dir(svc.settings.data_dir, svc.handle.db.name), pending) if svc.settings.audit_spool else None
    writer = AuditWriter(svc.handle.db, svc.repo, Node(svc.settings.province, svc.settings.base_url),
                         GroupCommitter(pending, spool=spool))
    if spool is not None:
        svc.handle.before_close(spool.close)  # what is spooled is shipped while the client still works
    checkpoints = checkpoints_for(svc, keys, checkpoint_interval) if keys is not None else None
    sealer_ = Sealer(svc.handle.db, svc.repo, svc.leases, writer, intent_grace=intent_grace,
                     checkpoints=checkpoints, **sealer)
    return writer, sealer_
