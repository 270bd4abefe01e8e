"""Storage events, fired in registration order (a list, not a set: audit order matters).

Events: "pre-create", "pre-update" (handlers may change the resource or raise a FhirError), "created",
"updated", "deleted", "read". mpi, ehc and audit subscribe here; storage never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENT_NAMES = ("pre-create", "pre-update", "created", "updated", "deleted", "read")


@dataclass
class StoreEvent:
    name: str
    resource_type: str
    resource: dict[str, Any] | None
    context: Any = None  # the caller's WriteContext / request context
    previous: dict[str, Any] | None = None  # for updates and deletes: the version replaced
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[StoreEvent], None]

# StoreEvent.extra key: (id, decoded stored document or None), the version a writer or handler read already, so
# that the handlers after it do not read the same version again.
PRIOR_DOC = "patient_doc"


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[tuple[str | None, Handler]]] = {n: [] for n in EVENT_NAMES}

    def subscribe(self, name: str, handler: Handler, resource_type: str | None = None) -> None:
        if name not in self._handlers:
            raise ValueError(f"unknown storage event {name!r}")
        self._handlers[name].append((resource_type, handler))

    def subscribe_writes(self, resource_type: str, *, pre: Handler, post: Handler, deleted: Handler) -> None:
        """The usual trio of a subscriber that follows one type's writes: pre-create and pre-update to `pre`,
        created and updated to `post`, deleted to `deleted`."""
        for name, handler in (("pre-create", pre), ("pre-update", pre), ("created", post), ("updated", post),
                              ("deleted", deleted)):
            self.subscribe(name, handler, resource_type)

    def fire(self, event: StoreEvent) -> None:
        for resource_type, handler in self._handlers[event.name]:
            if resource_type is None or resource_type == event.resource_type:
                handler(event)
