"""Data: readers for raw formats, preprocessing into sequences, the prepared-data cache."""

from training.data.preprocess import SeqData, Split, leave_one_out, to_sessions
from training.data.readers import DatasetError, Interactions
from training.data.registry import DATASETS, item_text, prepare, prepare_file

__all__ = [
    "DATASETS",
    "DatasetError",
    "Interactions",
    "SeqData",
    "Split",
    "item_text",
    "leave_one_out",
    "prepare",
    "prepare_file",
    "to_sessions",
]
