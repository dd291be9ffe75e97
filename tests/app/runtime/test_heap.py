"""app/runtime/heap.py, in a child interpreter (freezing the test process's heap would keep every later
test's garbage alive)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import ROOT

SETTLE_THEN_RELOAD = """
import gc, weakref
from app.runtime import heap

class Node:
    pass

heap.resettle()
assert gc.get_freeze_count() == 0, "resettle froze a process that never settled"
old = Node()
old.me = old  # a reference cycle: only the cyclic collector frees it
ref = weakref.ref(old)
heap.settle()
assert gc.get_freeze_count() > 0
del old
gc.collect()
assert ref() is not None, "a frozen object was collected"
heap.resettle()  # what a reload does: the replaced objects become collectable
assert ref() is None, "the replaced objects stayed frozen"
assert gc.get_freeze_count() > 0
print("ok")
"""


def test_settle_hides_the_heap_from_the_collector_and_a_reload_releases_it() -> None:
    r = subprocess.run([sys.executable, "-c", SETTLE_THEN_RELOAD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
