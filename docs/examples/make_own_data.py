"""Write the two example logs of docs/your-own-data.md (synthetic, real-looking, reproducible).

    python docs/examples/make_own_data.py OUT_DIR

OUT_DIR/purchases.csv   customer,product,qty            a shop's purchase log: string ids, no times
OUT_DIR/catalogue.csv   sku,title,brand,categories,price  its item text, in a separate file
OUT_DIR/views.csv       session_id;user_id;item_id;timeframe;eventdate   a web shop's session log
OUT_DIR/bad/*.csv       one small file per message the docs show

Both logs have sequential structure (customers work through a product line; a session browses
neighbouring items of one category), so a sequential model has something to learn beyond
popularity.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CATEGORIES = [
    ("Desk lamps", ["LED desk lamp", "Clamp lamp", "Architect lamp", "Reading light"]),
    ("Notebooks", ["A5 dotted notebook", "Hardcover journal", "Spiral notebook", "Graph pad"]),
    ("Pens", ["Gel pen 0.5", "Fountain pen", "Fineliner set", "Ballpoint 10-pack"]),
    ("Storage", ["Magazine file", "Archive box", "Drawer organiser", "Cable box"]),
    ("Chairs", ["Mesh office chair", "Kneeling chair", "Saddle stool", "Task chair"]),
    ("Monitors", ["24-inch monitor", "27-inch 4K monitor", "Monitor arm", "Monitor riser"]),
    ("Keyboards", ["Mechanical keyboard", "Low-profile keyboard", "Numeric keypad", "Wrist rest"]),
    ("Paper", ["A4 copy paper", "Recycled paper", "Sticky notes", "Index cards"]),
]
BRANDS = ["Acme", "Northwind", "Lumen", "Papyra", "Ergon", "Vista"]


def catalogue(rng: np.random.Generator) -> list[tuple[str, str, str, str, float, int]]:
    """(sku, title, brand, category, price, category index), 12 products per (category, line)."""
    out = []
    n = 0
    for c, (cat, lines) in enumerate(CATEGORIES):
        for line in lines:
            for k in range(12):
                brand = BRANDS[(c + k) % len(BRANDS)]
                n += 1
                title = f"{brand} {line} {['S', 'M', 'L', 'XL'][k % 4]} {['black', 'white', 'oak', 'grey'][k // 4 % 4]}"
                out.append((f"SKU-{10000 + n * 7}", title, brand, cat, round(float(rng.uniform(2, 400)), 2), c))
    return out


def purchases(rng: np.random.Generator, items: list, n_customers: int = 1500) -> list[tuple[str, str, int]]:
    rows = []
    by_cat: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_cat.setdefault(it[5], []).append(i)
    for u in range(n_customers):
        cust = f"C-{100000 + u * 13}"
        cats = rng.choice(len(CATEGORIES), size=2, replace=False)
        pos = {int(c): int(rng.integers(len(by_cat[int(c)]))) for c in cats}
        for _ in range(int(rng.integers(5, 16))):
            c = int(cats[0] if rng.random() < 0.7 else cats[1])
            pos[c] = (pos[c] + int(rng.integers(1, 3))) % len(by_cat[c])  # the next items of a line
            rows.append((cust, items[by_cat[c][pos[c]]][0], int(rng.integers(1, 4))))
    return rows


def views(rng: np.random.Generator, items: list, n_sessions: int = 5000) -> list[str]:
    rows = []
    skus = [it[0] for it in items]
    day0 = np.datetime64("2016-05-01")
    for s in range(n_sessions):
        user = f"{int(rng.integers(1, 900))}"
        start = int(rng.integers(len(skus)))
        day = str(day0 + np.timedelta64(s * 61 // n_sessions, "D"))
        t = 0
        i = start
        for _ in range(int(rng.integers(2, 9))):
            rows.append(f"{s + 1};{user};{skus[i]};{t};{day}")
            r = rng.random()
            if r < 0.55:  # the next product of the line
                i = (i + int(rng.integers(1, 3))) % len(skus)
            elif r < 0.85:  # another product of the same category (48 per category)
                i = i // 48 * 48 + int(rng.integers(48))
            else:  # anything
                i = int(rng.integers(len(skus)))
            t += int(rng.integers(5_000, 120_000))  # milliseconds since the session's first view
    return rows


def main(out: Path) -> None:
    rng = np.random.default_rng(2026)
    out.mkdir(parents=True, exist_ok=True)
    items = catalogue(rng)
    buys = purchases(rng, items)
    (out / "purchases.csv").write_text(
        "customer,product,qty\n" + "".join(f"{c},{p},{q}\n" for c, p, q in buys), encoding="utf-8"
    )
    cat = ["sku,title,brand,categories,price"] + [f'{s},"{t}",{b},{c},{p}' for s, t, b, c, p, _ in items]
    (out / "catalogue.csv").write_text("\n".join(cat) + "\n", encoding="utf-8")
    # The mistake a user made: an items file keyed by row number instead of the shop's sku.
    by_row = ["item_id,title"] + [f'{k},"{t}"' for k, (_, t, *_rest) in enumerate(items, 1)]
    (out / "catalogue_by_row.csv").write_text("\n".join(by_row) + "\n", encoding="utf-8")
    (out / "views.csv").write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n" + "\n".join(views(rng, items)) + "\n", encoding="utf-8"
    )
    bad = out / "bad"
    bad.mkdir(exist_ok=True)
    head = "user_id,item_id,timestamp\n"
    (bad / "yesterday.csv").write_text(head + "u1,i1,1700000000\nu1,i2,yesterday\nu1,i3,1700000100\n")
    (bad / "bad_iso.csv").write_text(head + "u1,i1,2024-01-31T10:00:00Z\nu1,i2,2024-02-30T10:00:00Z\n")
    (bad / "header_only.csv").write_text(head)
    (bad / "ragged.csv").write_text(head + "u1,i1,1700000000\nu1,i2,1700000060,gift,wrapped\n")
    (bad / "latin1.csv").write_bytes((head + "José,café,1700000000\n").encode("latin-1"))
    (bad / "float_times.csv").write_text(
        head + "".join(f"u{u},i{(u + k) % 7},{1700000000 + k * 0.25:.2f}\n" for u in range(6) for k in range(6))
    )
    (bad / "tiny.csv").write_text(
        head + "".join(f"u{u},i{(u + k) % 9},{1700000000 + k}\n" for u in range(8) for k in range(5))
    )
    print(f"wrote {len(buys)} purchases, {len(items)} catalogue items, the session log and bad/ into {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "own-data"))
