"""The cyclic garbage collector and a serving process's long-lived heap.

A worker holds hundreds of thousands of objects that live as long as it does: modules, classes
and functions of FastAPI, pydantic, redis-py, onnxruntime and faiss, the bundles and their
indexes. Every full (oldest-generation) collection walks all of them with the event loop stopped:
about 30 ms per collection in a served worker, measured several times a second under write load,
and one such pause delays every request due meanwhile. Once start-up is done they are moved out of
the collector's view (`gc.freeze`); objects created later are collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Freeze what is alive now (after a collection, so no garbage is frozen with it)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def resettle() -> None:
    """After a reload: the replaced bundles must become collectable again, so thaw, collect and
    freeze once more (one pause per reload). A no-op in a process that never settled (tests)."""
    if gc.get_freeze_count():
        settle()
