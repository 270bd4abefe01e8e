"""A pending audit record survives its compact form also without a resource type (a transaction, a system
history): the sealer rebuilt it with a TypeError and `ehc audit verify` stopped with a traceback."""

from app.audit.writer import record_doc, record_from
from app.core.access import AccessRecord, Principal


def test_record_without_resource_type_round_trips():
    record = AccessRecord("transaction", None, [], "0", 200, Principal(client_id="c1", province="11"))
    back = record_from(record_doc(record))
    assert back.resource_type is None and back.interaction == "transaction"
    assert back.principal is not None and back.principal.client_id == "c1"
