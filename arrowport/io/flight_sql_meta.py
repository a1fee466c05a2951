"""Flight SQL metadata: SqlInfo, catalogs, schemas, tables, table types, keys.

(Filled in by issue 19's metadata work; the tables below are what
``flight_sql`` dispatches.)
"""

from __future__ import annotations

from typing import Any

INFO: dict[Any, Any] = {}
SCHEMA: dict[Any, Any] = {}
GETS: dict[Any, Any] = {}
