"""The option reference, generated from the dataclasses: `seqrec options` and docs/recipes.md.

Model options carry their help as the comment beside the field in models/*.py; training and
task options carry it in the field's metadata (training/config.py).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING
from typing import Any

from training.config import TrainConfig, describe_fields
from training.zoo import MODELS, get_spec

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def _source_comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line (and the comment lines just above it)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = _FIELD_COMMENT.match(line)
        name = m.group(1) if m else (re.match(r"^\s+(\w+)\s*:", line) or [None, None])[1]
        if name:
            text = " ".join([*above, m.group(2)] if m else above)
            if text:
                out[name] = text
        above = []
    return out


def _rows(cls: type) -> list[dict[str, Any]]:
    rows = describe_fields(cls)
    comments = _source_comments(cls)
    for r in rows:
        r["help"] = r["help"] or comments.get(r["name"], "")
    return rows


def _fmt(v: Any) -> str:
    if v is MISSING:
        return "(required)"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def sections(model: str | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, rows) for [train], then each model's [model] and [task] tables."""
    names = [get_spec(model).name] if model else list(MODELS)
    out: list[tuple[str, list[dict[str, Any]]]] = []
    train_rows = _rows(TrainConfig)
    for name in names:
        spec = get_spec(name)
        per_model = spec.train_defaults.to_dict()
        differs = {r["name"]: per_model[r["name"]] for r in train_rows if per_model[r["name"]] != r["default"]}
        if differs:
            for r in train_rows:
                r.setdefault("per_model", {})
                if r["name"] in differs:
                    r["per_model"][name] = differs[r["name"]]
    out.append(("[train] (TrainConfig, every model)", train_rows))
    for name in names:
        spec = get_spec(name)
        out.append((f"[model] {name} ({spec.config_cls.__name__})", _rows(spec.config_cls)))
        out.append((f"[task] {name} ({spec.task_config_cls.__name__})", _rows(spec.task_config_cls)))
    return out


def _default_text(r: dict[str, Any]) -> str:
    text = _fmt(r["default"])
    per = r.get("per_model") or {}
    if per:
        text += " (" + ", ".join(f"{m}: {_fmt(v)}" for m, v in per.items()) + ")"
    return text


def options_text(model: str | None = None) -> str:
    lines = []
    for title, rows in sections(model):
        lines.append(title)
        for r in rows:
            lines.append(f"  {r['name']} ({r['type']}) = {_default_text(r)}")
            if r["help"]:
                lines.append(f"      {r['help']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def options_markdown(model: str | None = None) -> str:
    lines = []
    for title, rows in sections(model):
        lines += [f"#### {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for r in rows:
            help_text = r["help"].replace("|", "\\|")
            lines.append(f"| `{r['name']}` | {r['type']} | `{_default_text(r)}` | {help_text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
