"""Data: readers for raw formats, preprocessing into sequences, the prepared-data cache."""

from training.data.files import FileOptions, read_files
from training.data.preprocess import SeqData, Split, check_eval_queries, leave_one_out, to_sessions
from training.data.readers import DatasetError, Interactions
from training.data.registry import (
    DATASETS,
    data_from_meta,
    item_text,
    load_dataset,
    prepare,
    prepare_file,
    prepare_files,
)

__all__ = [
    "DATASETS",
    "DatasetError",
    "FileOptions",
    "Interactions",
    "SeqData",
    "Split",
    "check_eval_queries",
    "data_from_meta",
    "item_text",
    "leave_one_out",
    "load_dataset",
    "prepare",
    "prepare_file",
    "prepare_files",
    "read_files",
    "to_sessions",
]
