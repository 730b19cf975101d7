"""The Triton protocol extensions this server really implements, as ServerMetadata reports them
(Triton's names). The one list: a feature adds its name here when it lands, and only then.
"""

from __future__ import annotations

EXTENSIONS: tuple[str, ...] = (
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
    # request parameters `priority` and `timeout` (dynamic_batching priority levels, queue policy)
    "schedule_policy",
    # Triton parity (issue 16 item 3): an output's `classification` parameter
    "classification",
    # sequence batching (issue 16 item 5)
    "sequence",
    "sequence(string_id)",
    # system shared memory (issue 16 item 4)
    "system_shared_memory",
)
