"""Catalogue attributes and the filter language over them: what an item may carry, and the
business rules a request may state (docs/shop.md).

Attributes. An item carries named attributes of four kinds, fixed per attribute by its first value:
`string`, `number` (finite), `boolean`, `list` (of strings); `available` is a boolean every item
has (true unless said otherwise). `check_rows` validates catalogue rows (HTTP and `seqrec catalog
import` alike) and names each bad row and field, never the value.

Filters. A small language, tokenised and parsed by recursive descent into a tree (never eval):

    filter     := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | primary
    primary    := "(" filter ")" | comparison
    comparison := NAME op value                      price < 100, category = "shoes"
                | value op NAME                      100 > price
                | value op NAME op value             10 <= price < 100 (both < / <=, or both > / >=)
                | NAME "between" value "and" value   price between 10 and 100 (inclusive)
                | NAME ["not"] "in" "(" value ("," value)* ")"
                | NAME                               a boolean attribute is true
    op         := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    value      := STRING ("..." or '...', \\ escapes the quote and itself) | NUMBER | "true" | "false"

Keywords are case-insensitive. A list attribute `=` a string means "contains it", `in (...)` means
"contains one of them". A comparison with an attribute the item lacks is false; `!=` and `not` are
negations, so they are true for it. Ranges become two comparisons joined by `and`. Every parse error
and type error names the offending token and its position (1-based character), never the whole text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from app.ids import MAX_ID_LENGTH, id_rule_message

Kind = Literal["string", "number", "boolean", "list"]
KINDS: tuple[Kind, ...] = ("string", "number", "boolean", "list")
Value = str | float | bool

MAX_FILTER_CHARS = 2000
MAX_DEPTH = 32  # nesting of parentheses / not: bounds the recursion
MAX_IN_VALUES = 1000
MAX_ATTRIBUTES = 100  # per item, `available` included
MAX_STRING = 1000
MAX_LIST = 100
AVAILABLE = "available"
ITEM_ID = "item_id"
KEYWORDS = frozenset({"and", "or", "not", "in", "between", "true", "false"})
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# ---------------------------------------------------------------------------------- attributes
def as_kind(name: str | None) -> Kind | None:
    """A kind's name as a Kind (None for None or a name that is not one)."""
    return next((k for k in KINDS if k == name), None)


def value_kind(v: object) -> Kind | None:
    """The kind of a JSON value, or None when no attribute may hold it."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        try:
            return "number" if math.isfinite(float(v)) else None
        except OverflowError:  # an integer beyond float range
            return None
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return "list"
    return None


def name_problem(name: object) -> str | None:
    """Why `name` cannot name an attribute (None when it can)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return "an attribute name is a letter or _ followed by up to 63 letters, digits or _"
    if name.lower() in KEYWORDS:
        return "a filter keyword (and, or, not, in, between, true, false) cannot name an attribute"
    return None


def _value_problem(name: str, v: object, kind: Kind | None, want: Kind | None) -> str | None:
    if kind is None:
        return "must be a string, a finite number, true/false or a list of strings"
    if want is not None and kind != want:
        return f"is a {want} in the catalogue, not a {kind}"
    if isinstance(v, str) and (len(v) > MAX_STRING or _CONTROL.search(v)):
        return f"a string holds at most {MAX_STRING} characters and no control characters"
    if isinstance(v, list | tuple) and (len(v) > MAX_LIST or any(len(x) > MAX_STRING or _CONTROL.search(x) for x in v)):
        return f"a list holds at most {MAX_LIST} strings of at most {MAX_STRING} characters"
    return None


@dataclass(frozen=True)
class RowError:
    """One problem of one catalogue row: its position (0-based) and the field, never the value."""

    row: int
    field: str
    msg: str

    def __str__(self) -> str:
        return f"row {self.row + 1}: {self.field}: {self.msg}"


@dataclass
class Checked:
    """Rows that passed, as (item id, attributes) with `available` set, and the kinds they use."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    kinds: dict[str, Kind] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0


def check_rows(
    rows: Sequence[Any], schema: Mapping[str, str], max_errors: int = 20, first_row: int = 0, partial: bool = False
) -> Checked:
    """Validate catalogue rows against the catalogue's kinds (`schema`: attribute -> kind) and each
    other (the first value of a new attribute fixes its kind). Rows are objects with `item_id`
    and attributes; `available` defaults to true (`partial`: a change to merge, where null removes
    an attribute and nothing is defaulted). At most `max_errors` errors are kept; all are counted."""
    out = Checked()
    kinds: dict[str, Kind] = {}

    def bad(n: int, fld: str, msg: str) -> None:
        out.error_count += 1
        if len(out.errors) < max_errors:
            out.errors.append(RowError(first_row + n, fld, msg))

    for n, row in enumerate(rows):
        before = out.error_count
        if not isinstance(row, Mapping):
            bad(n, "-", "a row is an object with item_id and attributes")
            continue
        item = row.get(ITEM_ID)
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_ID_LENGTH:
            bad(n, ITEM_ID, f"required: a string of 1 to {MAX_ID_LENGTH} characters")
        elif (why := id_rule_message(item)) is not None:
            bad(n, ITEM_ID, why)
        attrs: dict[str, Any] = {}
        if len(row) > MAX_ATTRIBUTES + 1:
            bad(n, "-", f"at most {MAX_ATTRIBUTES} attributes per item")
        for name, v in row.items():
            if name == ITEM_ID:
                continue
            why = name_problem(name)
            if why is not None:
                bad(n, str(name)[:64], why)
                continue
            if v is None:
                if partial:
                    attrs[name] = None
                continue
            kind = value_kind(v)
            want = "boolean" if name == AVAILABLE else as_kind(schema.get(name)) or kinds.get(name)
            why = _value_problem(name, v, kind, want)
            if why is not None:
                bad(n, name, why)
                continue
            assert kind is not None
            if name != AVAILABLE and name not in schema:
                kinds.setdefault(name, kind)
            attrs[name] = float(v) if kind == "number" else list(v) if kind == "list" else v
        if not partial:
            attrs.setdefault(AVAILABLE, True)
        if out.error_count == before:
            out.rows.append((str(item), attrs))
    out.kinds = kinds
    return out


# ---------------------------------------------------------------------------------- the tree
@dataclass(frozen=True)
class Cmp:
    """attr op value; `pos`/`vpos`: where the name and the value stood (not part of equality)."""

    attr: str
    op: str  # = != < <= > >=
    value: Value
    pos: int = field(default=0, compare=False)
    vpos: int = field(default=0, compare=False)
    opos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class In:
    attr: str
    values: tuple[Value, ...]
    pos: int = field(default=0, compare=False)
    vpos: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Flag:
    """A boolean attribute standing alone: true when the item's attribute is true."""

    attr: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


Node = Cmp | In | Flag | Not | And | Or
OPS = ("=", "!=", "<", "<=", ">", ">=")
_SPELLING = {"==": "=", "<>": "!="}
_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class FilterError(ValueError):
    """A filter that does not parse or does not fit the catalogue; names the token and where it is."""

    def __init__(self, msg: str, pos: int) -> None:
        self.pos = pos
        super().__init__(f"{msg} at character {pos + 1}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


# ---------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Token:
    kind: str  # name, kw, str, num, op, ( ) , end
    text: str  # the source text of the token
    value: Any
    pos: int


_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPS = ("==", "!=", "<>", "<=", ">=", "=", "<", ">")


def tokenize(text: str) -> list[Token]:
    """Filter text -> tokens, ending with an `end` token; FilterError on a character that starts none."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "(),":
            out.append(Token(c, c, c, i))
            i += 1
            continue
        if c in "\"'":
            j, chars = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n and text[j + 1] in (c, "\\"):
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise FilterError("unterminated string", i)
            out.append(Token("str", text[i : j + 1], "".join(chars), i))
            i = j + 1
            continue
        m = _NUMBER.match(text, i)
        if m is not None and (c != "-" or not out or out[-1].kind in ("op", "(", ",", "kw")):
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] == "_"):
                raise FilterError(f"malformed number {_shown(text[i : end + 1])}", i)
            v = float(m.group())
            if not math.isfinite(v):
                raise FilterError(f"number {_shown(m.group())} is out of range", i)
            out.append(Token("num", m.group(), v, i))
            i = end
            continue
        m = NAME_RE.match(text, i)
        if m is not None:
            end = m.end()
            while end < n and (text[end].isalnum() or text[end] == "_"):
                end += 1  # a name longer than 64 characters: one token, refused below
            word = text[i:end]
            if word.lower() in KEYWORDS:
                out.append(Token("kw", word, word.lower(), i))
            elif end - i > 64:
                raise FilterError(f"attribute name {_shown(word)} is longer than 64 characters", i)
            else:
                out.append(Token("name", word, word, i))
            i = end
            continue
        op = next((o for o in _OPS if text.startswith(o, i)), None)
        if op is not None:
            out.append(Token("op", op, _SPELLING.get(op, op), i))
            i += len(op)
            continue
        raise FilterError(f"unexpected character {_shown(c)}", i)
    out.append(Token("end", "", None, n))
    return out


# ---------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value in words

    def fail(self, what: str, tok: Token | None = None) -> FilterError:
        tok = tok or self.tok
        found = "the end of the filter" if tok.kind == "end" else _shown(tok.text)
        return FilterError(f"expected {what}, found {found}", tok.pos)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise FilterError("empty filter", 0)
        node = self.or_()
        if self.tok.kind != "end":
            raise self.fail("'and', 'or' or the end of the filter")
        return node

    def or_(self) -> Node:
        args = [self.and_()]
        while self.at_kw("or"):
            self.take()
            args.append(self.and_())
        return args[0] if len(args) == 1 else Or(tuple(args))

    def and_(self) -> Node:
        args = [self.not_()]
        while self.at_kw("and"):
            self.take()
            args.append(self.not_())
        return args[0] if len(args) == 1 else And(tuple(args))

    def _deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested more than {MAX_DEPTH} levels", self.tok.pos)

    def not_(self) -> Node:
        if self.at_kw("not"):
            self.take()
            self._deeper()
            node = Not(self.not_())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "(":
            self.take()
            self._deeper()
            node = self.or_()
            if self.tok.kind != ")":
                raise self.fail("')' or 'and' / 'or'")
            self.take()
            self.depth -= 1
            return node
        if tok.kind == "name":
            return self.after_name(self.take())
        if self._is_value(tok):
            return self.value_first()
        raise self.fail("an attribute name, a value, 'not' or '('")

    @staticmethod
    def _is_value(tok: Token) -> bool:
        return tok.kind in ("str", "num") or (tok.kind == "kw" and tok.value in ("true", "false"))

    def value(self, after: str) -> tuple[Value, int]:
        tok = self.tok
        if not self._is_value(tok):
            raise self.fail(f"a value (string, number, true or false) after {after}")
        self.take()
        v: Value = tok.value == "true" if tok.kind == "kw" else tok.value
        return v, tok.pos

    def after_name(self, name: Token) -> Node:
        attr = name.value
        if self.tok.kind == "op":
            op = self.take()
            v, vpos = self.value(repr(op.text))
            return Cmp(attr, op.value, v, name.pos, vpos, op.pos)
        if self.at_kw("between"):
            self.take()
            lo, lpos = self.value("'between'")
            if not self.at_kw("and"):
                raise self.fail("'and' between the two bounds")
            self.take()
            hi, hpos = self.value("'and'")
            return And((Cmp(attr, ">=", lo, name.pos, lpos), Cmp(attr, "<=", hi, name.pos, hpos)))
        negate = False
        if self.at_kw("not"):
            self.take()
            negate = True
            if not self.at_kw("in"):
                raise self.fail("'in' after 'not'")
        if self.at_kw("in"):
            self.take()
            node: Node = self.in_list(name)
            return Not(node) if negate else node
        return Flag(attr, name.pos)

    def in_list(self, name: Token) -> In:
        if self.tok.kind != "(":
            raise self.fail("'(' after 'in'")
        self.take()
        values, where = [], []
        while True:
            v, vpos = self.value("'(' or ','")
            values.append(v)
            where.append(vpos)
            if len(values) > MAX_IN_VALUES:
                raise FilterError(f"more than {MAX_IN_VALUES} values in one 'in'", vpos)
            if self.tok.kind == ",":
                self.take()
                continue
            if self.tok.kind == ")":
                self.take()
                return In(name.value, tuple(values), name.pos, tuple(where))
            raise self.fail("',' or ')'")

    def value_first(self) -> Node:
        """`100 > price` and the range `10 <= price < 100`."""
        lo, lpos = self.value("'('")
        if self.tok.kind != "op" or self.tok.value not in ("<", "<=", ">", ">=", "=", "!="):
            raise self.fail("a comparison ('<', '<=', '>', '>=', '=', '!=') after a value")
        op1_tok = self.take()
        op1 = op1_tok.value
        if self.tok.kind != "name":
            raise self.fail("an attribute name after the comparison")
        name = self.take()
        first = Cmp(name.value, _FLIP[op1], lo, name.pos, lpos, op1_tok.pos)
        if self.tok.kind != "op":
            return first
        op2 = self.tok
        same_way = (op1 in ("<", "<=") and op2.value in ("<", "<=")) or (
            op1 in (">", ">=") and op2.value in (">", ">=")
        )
        if not same_way:
            raise self.fail("a range written with '<'/'<=' on both sides, or '>'/'>=' on both sides", op2)
        self.take()
        hi, hpos = self.value(repr(op2.text))
        return And((first, Cmp(name.value, op2.value, hi, name.pos, hpos, op2.pos)))


@lru_cache(maxsize=4096)
def parse_filter(text: str) -> Node:
    """Filter text -> tree (cached by text); FilterError naming the token and its position."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"a filter holds at most {MAX_FILTER_CHARS} characters", MAX_FILTER_CHARS)
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------- printer
def _literal(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_text(node: Node) -> str:
    """The canonical text of a tree: parse_filter(to_text(t)) == t."""
    if isinstance(node, Cmp):
        return f"{node.attr} {node.op} {_literal(node.value)}"
    if isinstance(node, In):
        return f"{node.attr} in ({', '.join(_literal(v) for v in node.values)})"
    if isinstance(node, Flag):
        return node.attr
    if isinstance(node, Not):
        inner = to_text(node.arg)
        return f"not ({inner})" if isinstance(node.arg, And | Or) else f"not {inner}"
    word = " and " if isinstance(node, And) else " or "
    return word.join(f"({to_text(a)})" if isinstance(a, And | Or) else to_text(a) for a in node.args)


def attributes(node: Node) -> set[str]:
    """Every attribute a tree names."""
    if isinstance(node, Cmp | In | Flag):
        return {node.attr}
    if isinstance(node, Not):
        return attributes(node.arg)
    return set().union(*(attributes(a) for a in node.args))


# ---------------------------------------------------------------------------------- types
_OPS_OF: dict[str, tuple[str, ...]] = {
    "string": ("=", "!="),
    "number": OPS,
    "boolean": ("=", "!="),
    "list": ("=", "!="),
}
_LITERAL_OF = {"string": "string", "number": "number", "boolean": "boolean", "list": "string"}


def _lit_kind(v: Value) -> str:
    return "boolean" if isinstance(v, bool) else "number" if isinstance(v, float) else "string"


def type_check(node: Node, schema: Mapping[str, str], strict: bool = True) -> None:
    """FilterError when the tree names an attribute the catalogue lacks, compares an attribute with
    a value of another kind, or uses an operator the kind has no meaning for. `strict=False` lets
    unknown attributes pass (a deployment's rule, checked before the catalogue has them)."""
    if isinstance(node, Not):
        type_check(node.arg, schema, strict)
        return
    if isinstance(node, And | Or):
        for a in node.args:
            type_check(a, schema, strict)
        return
    kind = schema.get(node.attr)
    if kind is None:
        if strict:
            raise FilterError(f"unknown attribute {_shown(node.attr)}", node.pos)
        return
    if isinstance(node, Flag):
        if kind != "boolean":
            raise FilterError(f"{_shown(node.attr)} is a {kind}, not a boolean: compare it with a value", node.pos)
        return
    want = _LITERAL_OF[kind]
    if isinstance(node, Cmp):
        if node.op not in _OPS_OF[kind]:
            raise FilterError(f"{_shown(node.op)} compares numbers; {_shown(node.attr)} is a {kind}", node.opos)
        pairs = [(node.value, node.vpos)]
    else:
        pairs = list(zip(node.values, node.vpos or (node.pos,) * len(node.values), strict=False))
    for v, vpos in pairs:
        got = _lit_kind(v)
        if got != want:
            raise FilterError(
                f"{_shown(node.attr)} is a {kind}: cannot compare it with the {got} {_literal(v)[:40]}", vpos
            )
