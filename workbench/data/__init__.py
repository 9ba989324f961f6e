"""Data stage: read a table, map columns and labels, split, and report on it."""

from .io import Table, read_table
from .prepare import PreparedData, guess_columns, normalize_label, prepare_data
from .report import DataReport, format_report

__all__ = ["DataReport", "PreparedData", "Table", "format_report", "guess_columns", "normalize_label",
           "prepare_data", "read_table"]
