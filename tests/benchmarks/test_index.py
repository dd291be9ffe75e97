"""The results index is generated from the result files and kept up to date."""

from __future__ import annotations

import ast
from pathlib import Path

from benchmarks.index import RESULTS, headline, index


def test_the_results_index_is_up_to_date() -> None:
    # Regenerate with: python -m benchmarks.index > benchmarks/results/README.md
    assert (RESULTS / "README.md").read_text() == index()


def test_every_result_lives_in_a_family_folder() -> None:
    assert not [p.name for p in RESULTS.iterdir() if p.is_file() and p.name != "README.md"]
    assert {p.name for p in RESULTS.iterdir() if p.is_dir()} >= {"serving", "live", "training", "models", "scale"}


def test_the_headline_prefers_a_named_headline_then_quality_then_speed() -> None:
    assert headline({"headline": "x = 1"}) == "x = 1"
    assert headline({"seconds": 3.0, "test": {"ndcg@10": 0.1234567}}) == "test.ndcg@10 = 0.1235"
    assert headline({"notes": "none"}) == ""


def test_no_benchmark_changes_the_import_path() -> None:
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    # Module-level statements only (a child process's script inside a string may set its own path).
    offenders = [p.name for p in root.rglob("*.py") if any(_inserts_path(s) for s in ast.parse(p.read_text()).body)]
    assert not offenders, offenders


def _inserts_path(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and "sys.path.insert" in ast.unparse(stmt)
