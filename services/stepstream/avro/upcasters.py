"""Upcasters: earlier record shapes that Avro schema resolution cannot bridge, brought to the current one.

Each takes a record as fastavro reads it with a frozen earlier schema (``schemas/stepstream.<Name>.v<N>.avsc``,
no resolution: the earlier shape exactly) and returns the datum the current schema would have read, which
the codec then turns into the dataclass as usual. :data:`UPCASTERS` is what every :class:`~stepstream.avro.Codec`
applies by default; ``schemas/README.md`` says when one is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

# Keyed by the earlier schema's file stem, like "stepstream.RunState.v1".
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def run_state_v1(old: dict[str, Any]) -> dict[str, Any]:
    """RunState v1 waited on at most one delivery and one sleep; now it waits on any number of each kind.

    ``pending_delivery`` becomes the one delivery in ``in_flight`` (a replay delivery, so not
    ``execute_only``), ``pending_sleep`` the one step in ``waiting``; the fields added since take their
    defaults (v1 runs had no parent, no retry rule, no failure handler, no dead-letter mark and no
    flow control). A field added to ``RunState`` later needs its default here too: an upcast record
    is not resolved against the current schema.
    """
    current = dict(old)
    pending_delivery = current.pop("pending_delivery")
    pending_sleep = current.pop("pending_sleep")
    current["in_flight"] = [] if pending_delivery is None else [{**pending_delivery, "execute_only": False}]
    # ``waiting`` is a union of records: read with its branch name, as fastavro reads such a union.
    current["waiting"] = [] if pending_sleep is None else [("stepstream.PendingSleep", pending_sleep)]
    current.update(
        retry_delay=None,
        failure_url=None,
        parent_run_id=None,
        parent_step_index=None,
        depth=0,
        failure_delivery=None,
        dead_letter=False,
        flow=None,
    )
    return current


UPCASTERS: Final[Mapping[str, Upcaster]] = MappingProxyType({"stepstream.RunState.v1": run_state_v1})
