"""How deep a package's imports stack: the longest chain of imports between its modules.

    python scripts/import_levels.py app            # levels, and the longest chain
    python scripts/import_levels.py app --levels   # every module with its level (1 = imports none)

Read with grimp (the graph import-linter checks), type-only imports included. A module's level is
1 when it imports no other module of the package, else one more than the highest level it imports.
A circle has no level: the modules on one are listed instead.
"""

from __future__ import annotations

import argparse
import sys
from functools import cache

import grimp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="top-level package, e.g. app")
    ap.add_argument("--levels", action="store_true", help="print every module with its level")
    args = ap.parse_args()
    sys.path.insert(0, ".")  # the package of the checkout this runs in
    graph = grimp.build_graph(args.package, exclude_type_checking_imports=False)
    modules = sorted(m for m in graph.modules if m == args.package or m.startswith(args.package + "."))
    # A package's __init__ that only re-exports is a module like any other.
    imports = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules and i != m} for m in modules}
    on_stack: set[str] = set()
    circles: set[str] = set()

    @cache
    def level(m: str) -> int:
        if m in on_stack:
            circles.add(m)
            return 0
        on_stack.add(m)
        lv = 1 + max((level(i) for i in imports[m]), default=0)
        on_stack.discard(m)
        return lv

    levels = {m: level(m) for m in modules}
    top = max(levels, key=lambda m: levels[m])
    chain = [top]
    while imports[chain[-1]]:
        nxt = max(imports[chain[-1]], key=lambda i: levels[i])
        if nxt in chain:
            break
        chain.append(nxt)
    print(f"{args.package}: {len(modules)} modules, {levels[top]} import levels")
    print("longest chain: " + " -> ".join(chain))
    if circles:
        print("on a circle: " + ", ".join(sorted(circles)))
    if args.levels:
        for m in sorted(modules, key=lambda m: (-levels[m], m)):
            print(f"{levels[m]:3d}  {m}")


if __name__ == "__main__":
    main()
