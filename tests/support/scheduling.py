"""The pytest-xdist schedule of `make test`: a module (or class) per work unit, every item of it sent.

xdist's own `--dist loadscope` keys a unit's tests by node id and sends one item per id. Items
that share an id then run once instead of each: schemathesis' fuzz items (one per API operation in
tests/deploy/test_fuzz.py) all have the same id. This sends every item whose id is in the unit.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling


class ModuleScheduling(LoadScopeScheduling):
    def _assign_work_unit(self, node: Any) -> None:
        scope, work_unit = self.workqueue.popitem(last=False)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        pending = {nodeid for nodeid, done in work_unit.items() if not done}
        node.send_runtest_some([i for i, nodeid in enumerate(collection) if nodeid in pending])
