"""The query room: the fluent query, its read plan, AnnData reconstruction and the cell-table scans.

See ``docs/architecture.md`` ("The four rooms"; "Querying").
"""
