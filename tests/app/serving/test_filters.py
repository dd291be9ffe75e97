"""The filter language (app/serving/filters.py) and its evaluation over a bundle's items
(app/serving/catalog.py): property tests with hypothesis.

- print/parse round trip: any tree prints to a text that parses back to the same tree;
- evaluation against a straightforward per-item reference, on random catalogues (every kind,
  missing attributes, items without a record, records for ids no bundle knows), also after the
  catalogue changes under a view that already exists;
- errors name the token and its position and never repeat the whole filter; catalogue rows are
  checked row by row, naming the row and the field.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.serving.catalog import Catalog, Wanted, evaluate
from app.serving.filters import (
    KEYWORDS,
    And,
    Cmp,
    FilterError,
    Flag,
    In,
    Node,
    Not,
    Or,
    check_rows,
    parse_filter,
    to_text,
    type_check,
)
from app.stores.catalog import MemoryCatalog

# ---------------------------------------------------------------------------------- trees
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(lambda s: s.lower() not in KEYWORDS)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
texts = st.text(max_size=12)  # any character: quotes, backslashes, spaces, unicode
values = st.one_of(numbers, texts, st.booleans())
OPS = ["=", "!=", "<", "<=", ">", ">="]


def trees(leaf: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            sub.map(Not),
            st.lists(sub, min_size=2, max_size=3).map(lambda a: And(tuple(a))),
            st.lists(sub, min_size=2, max_size=3).map(lambda a: Or(tuple(a))),
        ),
        max_leaves=8,
    )


any_leaf = st.one_of(
    st.builds(Cmp, names, st.sampled_from(OPS), values),
    st.builds(lambda a, v: In(a, tuple(v)), names, st.lists(values, min_size=1, max_size=4)),
    st.builds(Flag, names),
)


@settings(max_examples=400, deadline=None)
@given(trees(any_leaf))
def test_every_tree_prints_to_a_text_that_parses_back_to_it(tree: Node) -> None:
    text = to_text(tree)
    assert parse_filter(text) == tree, text
    assert to_text(parse_filter(text)) == text  # the printed form is canonical


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ('category in ("shoes","bags") and price < 100', 'category in ("shoes", "bags") and price < 100'),
        ("10 <= price < 100", "price >= 10 and price < 100"),
        ("100 > price", "price < 100"),
        ("price between 10 and 20.5", "price >= 10 and price <= 20.5"),
        ("NOT on_sale OR brand == 'acme'", 'not on_sale or brand = "acme"'),
        ("brand <> 'a\\'b'", 'brand != "a\'b"'),
        ("tags not in ('x', \"y\")", 'not tags in ("x", "y")'),
        ("a and (b or c) and not (d and e)", "a and (b or c) and not (d and e)"),
        ("x = -1.5e3 and y != true", "x = -1500 and y != true"),
    ],
)
def test_the_documented_spellings(text: str, canonical: str) -> None:
    assert to_text(parse_filter(text)) == canonical


@pytest.mark.parametrize(
    ("text", "token", "position"),
    [
        ("price <", "the end of the filter", 8),
        ("price < 100 and", "the end of the filter", 16),
        ('category in ("a" "b")', "'\"b\"'", 18),
        ("price $ 5", "'$'", 7),
        ('brand = "acme', "unterminated string", 9),
        ("price < 5abc", "'5a'", 9),
        ("(a = 1", "the end of the filter", 7),
        ("a not b", "'b'", 7),
        ("5 < a > 3", "'>'", 7),
        ("", "empty filter", 1),
    ],
)
def test_a_filter_that_does_not_parse_names_the_token_and_its_position(text: str, token: str, position: int) -> None:
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    assert token in str(err.value) and str(err.value).endswith(f"at character {position}")
    assert err.value.pos == position - 1


def test_an_error_never_repeats_the_whole_filter() -> None:
    long = " and ".join(f'attribute_{n} = "{"x" * 30}"' for n in range(40)) + " and price <"
    with pytest.raises(FilterError) as err:
        parse_filter(long)
    assert len(str(err.value)) < 120 and long not in str(err.value)
    with pytest.raises(FilterError, match="at most 2000 characters"):
        parse_filter("a = 1 and " * 300 + "a = 1")
    with pytest.raises(FilterError, match="nested more than 32 levels"):
        parse_filter("(" * 40 + "a" + ")" * 40)
    with pytest.raises(FilterError, match="nested more than 32 levels"):
        parse_filter("not " * 40 + "a")


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ('colour = "red"', "unknown attribute 'colour'", 1),
        ('price < "cheap"', "'price' is a number: cannot compare it with the string \"cheap\"", 9),
        ("category = 5", "'category' is a string: cannot compare it with the number 5", 12),
        ("category < 'x'", "'<' compares numbers; 'category' is a string", 10),
        ("tags > 'x'", "'>' compares numbers; 'tags' is a list", 6),
        ("price", "'price' is a number, not a boolean", 1),
        ('on_sale in (true, "no")', "'on_sale' is a boolean: cannot compare it with the string \"no\"", 19),
    ],
)
def test_a_filter_that_does_not_fit_the_catalogue_names_the_token(text: str, message: str, position: int) -> None:
    schema = {"price": "number", "category": "string", "tags": "list", "on_sale": "boolean"}
    with pytest.raises(FilterError) as err:
        type_check(parse_filter(text), schema)
    assert message in str(err.value) and str(err.value).endswith(f"at character {position}")
    type_check(parse_filter('colour = "red" and price < 5'), schema, strict=False)  # a deployment's rule


# ---------------------------------------------------------------------------------- evaluation
SCHEMA = {"price": "number", "brand": "string", "tags": "list", "on_sale": "boolean"}
WORDS = ["a", "b", "c", "d\"'\\"]


def reference(node: Node, item: dict[str, Any]) -> bool:
    """The filter's meaning, one item at a time: a comparison with an attribute the item lacks is
    false; `!=` and `not` negate."""
    if isinstance(node, Not):
        return not reference(node.arg, item)
    if isinstance(node, And):
        return all(reference(a, item) for a in node.args)
    if isinstance(node, Or):
        return any(reference(a, item) for a in node.args)
    v = item.get(node.attr)
    if isinstance(node, Flag):
        return v is True

    def eq(want: Any) -> bool:
        if v is None or isinstance(want, bool) != isinstance(v, bool):
            return False
        return want in v if isinstance(v, list) else v == want and type(v) is type(want)

    if isinstance(node, In):
        return any(eq(w) for w in node.values)
    if node.op == "=":
        return eq(node.value)
    if node.op == "!=":
        return not eq(node.value)
    if not isinstance(v, float) or isinstance(v, bool) or not isinstance(node.value, float):
        return False
    return {"<": v < node.value, "<=": v <= node.value, ">": v > node.value, ">=": v >= node.value}[node.op]


small_numbers = st.sampled_from([0.0, 1.0, 2.5, 3.0, -1.0, 10.0])
fitting_leaf = st.one_of(
    st.builds(Cmp, st.just("price"), st.sampled_from(OPS), small_numbers),
    st.builds(Cmp, st.sampled_from(["brand", "tags"]), st.sampled_from(["=", "!="]), st.sampled_from(WORDS)),
    st.builds(Cmp, st.sampled_from(["on_sale", "available"]), st.sampled_from(["=", "!="]), st.booleans()),
    st.builds(lambda v: In("brand", tuple(v)), st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)),
    st.builds(lambda v: In("tags", tuple(v)), st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)),
    st.builds(lambda v: In("price", tuple(v)), st.lists(small_numbers, min_size=1, max_size=3)),
    st.builds(Flag, st.sampled_from(["on_sale", "available"])),
)
attrs = st.fixed_dictionaries(
    {},
    optional={
        "price": small_numbers,
        "brand": st.sampled_from(WORDS),
        "tags": st.lists(st.sampled_from(WORDS), max_size=3),
        "on_sale": st.booleans(),
        "available": st.booleans(),
    },
)


class _Bundle:
    """What a view reads of a bundle: its item ids (label = position + 1)."""

    def __init__(self, ids: list[str]) -> None:
        self.item_ids = ids
        self.index_of = {i: n + 1 for n, i in enumerate(ids)}


def _bundle(ids: list[str]) -> Any:
    return _Bundle(ids)


def _check(catalog: Catalog, bundle: Any, records: dict[str, dict[str, Any]], tree: Node) -> None:
    text = to_text(tree)
    rules = catalog.rules(bundle, Wanted(filter=text, include_unavailable=True))
    assert rules.mask is not None
    want = [False] + [reference(tree, {"available": True} | records.get(i, {})) for i in bundle.item_ids]
    assert rules.mask.tolist() == want, text
    # availability on top: the same minus the unavailable items
    strict = catalog.rules(bundle, Wanted(filter=text))
    assert strict.mask is not None
    avail = [False] + [records.get(i, {}).get("available", True) for i in bundle.item_ids]
    assert strict.mask.tolist() == [w and a for w, a in zip(want, avail, strict=True)], text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(attrs, min_size=1, max_size=25),
    st.lists(attrs, max_size=10),
    st.lists(trees(fitting_leaf), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
def test_evaluation_matches_the_reference_on_random_catalogues(
    first: list[dict[str, Any]], later: list[dict[str, Any]], filters: list[Node], rnd: Any
) -> None:
    async def run() -> None:
        catalog = Catalog(MemoryCatalog())
        # the attribute kinds, fixed once (a value of every kind), then random records
        assert (await catalog.put([{"item_id": "kinds", "price": 1, "brand": "a", "tags": [], "on_sale": True}]))[0]
        ids = [f"i{n}" for n in range(len(first) + 5)]  # 5 items the bundle knows without a record
        records: dict[str, dict[str, Any]] = {"kinds": {"price": 1.0, "brand": "a", "tags": [], "on_sale": True}}
        rows = [{"item_id": i, **a} for i, a in zip(ids, first, strict=False)]
        rows.append({"item_id": "not-in-the-bundle", "price": 2.0})
        version, errors, _ = await catalog.put(rows)
        assert version and not errors
        records |= {r["item_id"]: {k: v for k, v in r.items() if k != "item_id"} for r in rows}
        bundle = _bundle(ids)
        for tree in filters:
            _check(catalog, bundle, records, tree)
        # Changes reach a view that exists already: replaced records, deletions, new records.
        changed = [{"item_id": rnd.choice(ids), **a} for a in later]
        if changed:
            assert (await catalog.put(changed))[0]
            for r in changed:
                records[r["item_id"]] = {k: v for k, v in r.items() if k != "item_id"}
        gone = rnd.choice(ids)
        if gone in records:
            await catalog.delete(gone)
            del records[gone]
        for tree in filters:
            _check(catalog, bundle, records, tree)

    asyncio.run(run())


def test_ints_and_floats_compare_alike_and_kinds_are_fixed_by_first_use() -> None:
    async def run() -> None:
        catalog = Catalog(MemoryCatalog())
        await catalog.put([{"item_id": "a", "price": 3}, {"item_id": "b", "price": 3.5}])
        rules = catalog.rules(_bundle(["a", "b"]), Wanted(filter="price = 3"))
        assert rules.mask is not None and rules.mask.tolist() == [False, True, False]
        _, errors, count = await catalog.put([{"item_id": "c", "price": "cheap"}])
        assert count == 1 and str(errors[0]) == "row 1: price: is a number in the catalogue, not a string"

    asyncio.run(run())


def test_evaluate_treats_unknown_attributes_of_a_deployment_rule_as_missing() -> None:
    async def run() -> None:
        catalog = Catalog(MemoryCatalog(), rules={"default": 'colour != "red" and not discontinued'})
        await catalog.put([{"item_id": "a", "price": 3}])
        view = catalog.view(_bundle(["a", "b"]))
        assert evaluate(parse_filter('colour = "red"'), view).tolist() == [False, False, False]
        rules = catalog.rules(_bundle(["a", "b"]), Wanted())
        assert rules.mask is not None and rules.mask.tolist() == [False, True, True] and rules.filtered == 0

    asyncio.run(run())


# ---------------------------------------------------------------------------------- rows
def test_rows_are_checked_one_by_one_naming_the_row_and_the_field() -> None:
    rows: list[Any] = [
        {"item_id": "ok", "price": 10, "tags": ["x"], "brand": "acme", "on_sale": False},
        {"price": 5},  # no id
        {"item_id": "bad/id"},
        {"item_id": "k", "price": "ten"},  # the batch fixed price as a number in row 1
        {"item_id": "k2", "tags": ["x", 3]},
        {"item_id": "k3", "bad-name": 1, "and": 2},
        {"item_id": "k4", "available": "yes", "price": math.inf},
        "not an object",
        {"item_id": "k5", "nested": {"a": 1}, "big": 10**400},
    ]
    got = check_rows(rows, {"brand": "string"}, max_errors=50)
    assert [str(e) for e in got.errors] == [
        "row 2: item_id: required: a string of 1 to 128 characters",
        "row 3: item_id: id must not contain '/': no '/', control, format (zero-width, bidi) or U+FFFD",
        "row 4: price: is a number in the catalogue, not a string",
        "row 5: tags: must be a string, a finite number, true/false or a list of strings",
        "row 6: bad-name: an attribute name is a letter or _ followed by up to 63 letters, digits or _",
        "row 6: and: a filter keyword (and, or, not, in, between, true, false) cannot name an attribute",
        "row 7: available: is a boolean in the catalogue, not a string",
        "row 7: price: must be a string, a finite number, true/false or a list of strings",
        "row 8: -: a row is an object with item_id and attributes",
        "row 9: nested: must be a string, a finite number, true/false or a list of strings",
        "row 9: big: must be a string, a finite number, true/false or a list of strings",
    ]
    assert [i for i, _ in got.rows] == ["ok"] and got.kinds == {"price": "number", "tags": "list", "on_sale": "boolean"}
    assert got.rows[0][1]["available"] is True  # defaulted
    bounded = check_rows(rows, {}, max_errors=3)
    assert len(bounded.errors) == 3 and bounded.error_count == len(got.errors)
    assert all("ten" not in str(e) for e in got.errors)  # values are never repeated


def test_text_limits() -> None:
    long = check_rows([{"item_id": "a", "title": "x" * 1001, "tags": ["y"] * 101, "ctl": "a\x00b"}], {})
    assert [e.field for e in long.errors] == ["title", "tags", "ctl"]
    assert check_rows([{"item_id": "a", **{f"a{n}": n for n in range(101)}}], {}).errors[0].field == "-"
    rng = np.random.default_rng(0)
    many = [{"item_id": f"i{n}", "x": float(v)} for n, v in enumerate(rng.normal(size=100))]
    assert not check_rows(many, {}).errors  # numbers of any sign pass
