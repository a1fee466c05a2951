"""Flight SQL queries: statements and prepared statements, read-only.

(Filled in by issue 19's query work; the tables below are what ``flight_sql``
dispatches.)
"""

from __future__ import annotations

from typing import Any

INFO: dict[Any, Any] = {}
SCHEMA: dict[Any, Any] = {}
GETS: dict[Any, Any] = {}
PUTS: dict[Any, Any] = {}
ACTIONS: dict[str, Any] = {}
