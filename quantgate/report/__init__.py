"""Render a Comparison as JSON, a terminal table, and a self-contained HTML page."""
from .files import atomic_write, write_reports
from .terminal import table

__all__ = ["atomic_write", "write_reports", "table"]
