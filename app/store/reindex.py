"""Rebuilding the search index values and sort keys of the stored resources (`ehc reindex`).

A document keeps the values its searches are answered from (`ix`) and its sort keys (`so`), computed when it was
written. A release that changes how values are indexed leaves the documents written before it answering by the
old rule until they are rebuilt. So it was on 2026-11-30, when a date without a zone (a birth date,
`effectiveDateTime: "2024-03-15"`) became a day of China instead of a day of UTC: `Patient?birthdate=1990-01-01`
finds a Patient written before that change only once it is rebuilt.

Each current version is rebuilt exactly as a write builds it (`Repository.build_doc`), and only its `ix` and `so`
are replaced, on the condition that it is still the version that was read: a write that lands meanwhile has been
indexed by the new rule already, and is left alone. So the command is safe while the server runs, and safe to
rerun (a document already right is not written). Posting lists hold references and identifiers, whose reading
has not changed, and history versions are not searched: neither is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.store.repository import Repository


@dataclass
class ReindexReport:
    checked: int = 0  # current versions read
    rebuilt: dict[str, int] = field(default_factory=dict)  # resource type -> versions whose index was replaced
    raced: int = 0  # versions replaced by a write while they were rebuilt (indexed by that write)

    def to_json(self) -> dict[str, object]:
        return {"checked": self.checked, "rebuilt": sum(self.rebuilt.values()), "by_type": self.rebuilt,
                "changed_meanwhile": self.raced}


def reindex(repo: Repository, on_document: Callable[[str, str], None] | None = None) -> ReindexReport:
    """Rebuild `ix` and `so` of every live current version whose stored ones differ from a fresh build.
    `on_document(type, id)`: told of each document read, before it is rebuilt (a progress bar)."""
    report = ReindexReport()
    existing = set(repo.db.list_collection_names())
    for rtype in sorted(repo.resource_types & existing):
        col = repo.current(rtype)
        for raw in col.find({}, batch_size=500):
            report.checked += 1
            if on_document is not None:
                on_document(rtype, str(raw["_id"]))
            if raw.get("del") or not raw.get("res"):
                continue
            stored_ix, stored_so = raw.get("ix"), raw.get("so")
            doc = repo.decode(raw, owned=True)
            assert doc is not None
            fresh = repo.build_doc(rtype, doc["_id"], doc["vid"], doc["ts"], doc["res"], doc["prov"])
            if fresh.get("ix") == stored_ix and fresh.get("so") == stored_so:
                continue
            done = col.update_one({"_id": doc["_id"], "vid": doc["vid"]},
                                  {"$set": {"ix": fresh.get("ix"), "so": fresh.get("so")}})
            if done.matched_count:
                report.rebuilt[rtype] = report.rebuilt.get(rtype, 0) + 1
            else:
                report.raced += 1
    return report
