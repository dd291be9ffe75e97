"""The README and docs stay short, linked and true to the result files.

- README.md stays well under a lab notebook's length (at most 350 lines);
- every link from README.md or a page under docs/ to a local file points at a file that exists;
- every row of the README's results table links a recipe and a result file, and the numbers it
  quotes are the ones in that result file;
- no tracked text file talks about how the work was organised (numbered rounds of work and the
  like) instead of dates and machines.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 350

# [text](target) in markdown; images too. Targets with a scheme or a bare anchor are not files.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Work-organisation phrases. Written so this file does not match itself ("work[ ]period").
# "session" alone is a domain word here (user sessions, session-parallel batches, ORT sessions):
# only a session followed by a number, or "this" before it, names a round of work.
PROCESS_WORDS = re.compile(
    r"\bsessions?[- ]\d+\b|\bthis[ ]session\b|\bwork[ ]periods?\b|\bissues?[ ]#?\d+\b",
    re.IGNORECASE,
)
SKIP_DIRS = {".git", ".venv", "node_modules", "runs", "artifacts", ".seqrec_cache", "__pycache__"}


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def local_links(md: Path) -> Iterator[tuple[str, Path]]:
    for target in LINK.findall(md.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto:, an anchor in the same page
        path = target.split("#", 1)[0]
        yield target, (md.parent / path).resolve()


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it under {MAX_README_LINES} (move logs to docs/)"


def test_local_links_resolve() -> None:
    broken = [
        f"{md.relative_to(ROOT)}: {target}"
        for md in markdown_files()
        for target, path in local_links(md)
        if not path.exists()
    ]
    assert not broken, "broken local links:\n" + "\n".join(broken)


def _metric_pairs(obj: Any) -> Iterator[tuple[float, float]]:
    """Every (NDCG@10, HR@10) pair anywhere in a result file."""
    if isinstance(obj, dict):
        if isinstance(obj.get("ndcg@10"), int | float) and isinstance(obj.get("hr@10"), int | float):
            yield float(obj["ndcg@10"]), float(obj["hr@10"])
        for v in obj.values():
            yield from _metric_pairs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _metric_pairs(v)


def results_rows() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|") and "benchmarks/results/" in line]


def test_results_table_rows_link_a_recipe_and_quote_their_result_file() -> None:
    rows = results_rows()
    assert len(rows) >= 7, "the README's results table lost rows"
    for row in rows:
        targets = LINK.findall(row)
        recipes = [t for t in targets if t.startswith("recipes/") and t.endswith(".toml")]
        results = [t for t in targets if t.startswith("benchmarks/results/") and t.endswith(".json")]
        assert recipes and results, f"row must link a recipe and a result file: {row}"
        ours = re.search(r"\*\*(\d\.\d{4}) / (\d\.\d{4})\*\*", row)
        assert ours, f"row must quote its NDCG@10 / HR@10 in bold: {row}"
        ndcg, hr = float(ours.group(1)), float(ours.group(2))
        pairs = list(_metric_pairs(json.loads((ROOT / results[0]).read_text(encoding="utf-8"))))
        assert any(round(n, 4) == ndcg and round(h, 4) == hr for n, h in pairs), (
            f"{results[0]} does not hold NDCG@10 {ndcg} / HR@10 {hr}"
        )


def test_results_pages_quote_their_training_result_files() -> None:
    """Each table row of docs/results/*.md that links a training result quotes its test metrics."""
    checked = 0
    for md in sorted((ROOT / "docs" / "results").glob("*.md")):
        for row in md.read_text(encoding="utf-8").splitlines():
            links = [t for t in LINK.findall(row) if t.endswith(".json") and "/train-" in t]
            pair = re.search(r"(\d\.\d{4}) / (\d\.\d{4})", row)
            if not row.startswith("|") or not links or not pair or "Recall@20" in row:
                continue
            result = json.loads((md.parent / links[0]).resolve().read_text(encoding="utf-8"))
            test = result["test"]
            quoted = (float(pair.group(1)), float(pair.group(2)))
            assert quoted == (round(test["ndcg@10"], 4), round(test["hr@10"], 4)), (
                f"{md.name}: {links[0]} holds test {test['ndcg@10']:.4f} / {test['hr@10']:.4f}, the row says {quoted}"
            )
            checked += 1
    assert checked >= 40, f"only {checked} result rows checked: did the tables change shape?"


def names_in_docs_but_not_in(pattern: str, known: set[str]) -> list[str]:
    """`file: name` for every match of `pattern` (group 1, or the whole match) in the docs not in `known`."""
    found = {
        (md, m.group(1) if m.groups() else m.group(0))
        for md in markdown_files()
        for m in re.finditer(pattern, md.read_text(encoding="utf-8"))
    }
    return sorted(f"{md.relative_to(ROOT)}: {name}" for md, name in found if name not in known)


def test_documented_settings_exist() -> None:
    """Every SEQREC_* variable the README or the docs pages name is read somewhere in the code."""
    from app.settings import Settings

    known = {f"SEQREC_{name.upper()}" for name in Settings.model_fields}
    for p in tracked_text_files():
        if p.suffix != ".md":
            known |= set(re.findall(r"SEQREC_[A-Z0-9_]+", p.read_text(encoding="utf-8", errors="replace")))
    stale = names_in_docs_but_not_in(r"SEQREC_[A-Z0-9_]+", known)
    assert not stale, "settings the docs name but no code reads:\n" + "\n".join(stale)


def test_tests_named_in_the_docs_exist() -> None:
    """The fault table and the results pages name tests as proof; each named test must exist."""
    defined = set()
    for p in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", p.read_text(encoding="utf-8"), re.MULTILINE))
    missing = names_in_docs_but_not_in(r"`(?:[\w/.]+::)?(test_\w+)(?:\[[^\]`]*\])?`", defined)
    assert not missing, "tests the docs name but the suite does not have:\n" + "\n".join(missing)


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked archive)
        files = [p for p in ROOT.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    texts = []
    for p in files:
        if not p.is_file():
            continue
        head = p.read_bytes()[:8192]
        if b"\0" not in head:
            texts.append(p)
    return texts


def test_no_work_organisation_words_in_tracked_files() -> None:
    hits = []
    for p in tracked_text_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        for m in PROCESS_WORDS.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{p.relative_to(ROOT)}:{line}: {m.group(0)!r}")
    assert not hits, "date experiments and name machines instead:\n" + "\n".join(hits[:50])


def test_process_word_pattern_tells_work_periods_from_user_sessions() -> None:
    # Built from parts so that this file itself stays free of the phrases it looks for.
    s, i = "session", "issue"
    for phrase in (f"measured in {s} 22 on a Xeon", f"the {s}-24 pilots", f"see {i} #30", f"this {s}'s CPU"):
        assert PROCESS_WORDS.search(phrase), phrase
    domain = ("session-parallel mini-batches", "30-min-gap sessions", "an onnxruntime session", "--session-gap 1800")
    for phrase in domain:
        assert not PROCESS_WORDS.search(phrase), phrase
