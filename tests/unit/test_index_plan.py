"""The MongoDB index plan stays inside MongoDB's 64 indexes a collection for every R4 type, and indexes first
what selective searches use."""

from __future__ import annotations

from pathlib import Path

from app.search.registry import SearchRegistry
from app.store.repository import index_plan

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"


def test_every_type_fits_mongodb_and_indexes_the_selective_parameters_first() -> None:
    registry = SearchRegistry.from_profiles(PROFILES)
    assert len(registry.resource_types()) > 100
    for rtype in registry.resource_types():
        names = [m.document["name"] for m in index_plan(registry, rtype)]
        assert len(names) < 64 and len(set(names)) == len(names), rtype
    obs = [m.document["name"] for m in index_plan(registry, "Observation")]
    assert obs[:5] == ["ts", "ix_identifier", "ix_patient", "ix_subject", "ix_code"]
