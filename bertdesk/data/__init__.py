"""Reading and batching datasets."""

from bertdesk.data.tables import DataError, load_classification, read_table

__all__ = ["DataError", "load_classification", "read_table"]
