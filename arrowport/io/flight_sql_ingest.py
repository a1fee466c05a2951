"""Flight SQL bulk ingest: ``CommandStatementIngest`` over DoPut.

(Filled in by issue 19's ingest work; ``PUTS`` is what ``flight_sql`` dispatches.)
"""

from __future__ import annotations

from typing import Any

PUTS: dict[Any, Any] = {}
