"""How identifiers are commonly written, crossed with note-like contexts: which written forms survive the scrubber.

    python benchmarks/deid_grids.py [--show 3]

A check by design rather than by corpus: each grid crosses shapes written from general knowledge of
how notes write a date, a name, a place or a contact number (in title, lower and upper case) with a
few sentence frames, and counts per shape the outputs in which the value still stands as a whole
word. Names and places are drawn from the installed census lists and gazetteers (seeded), so no
corpus text is involved. A leaking shape is a category to handle (or a documented exception, such as
``7-22`` without a date word: on the PhysioNet dev half 233 of 234 such pairs are ranges); the
shapes found so far are pinned by unit tests in tests/test_deid_text.py. It is a development set:
rules are written from it, so its figure is no estimate of real notes (that is deid_notes.py
--physionet's test half).
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter, defaultdict

import pyarrow as pa

import cohortsync.deid.recognizers as R
from cohortsync.deid import lexicon
from cohortsync.deid.text import TextScrubber, TextSettings

CASES = (str.title, str.lower, str.upper)
DATE_SHAPES = """7/22|07/22|7/22/99|7/22/2099|07/22/2099|7-22|7-22-99|7-22-2099|07-22-2099|7.22|7.22.99|7.22.2099|
2099-07-22|2099/07/22|22-Jul|22-Jul-99|22-Jul-2099|22 Jul|22 Jul 2099|22 July|22 July 2099|Jul 22|Jul. 22|July 22|
July 22nd|July 22, 2099|Jul 22 2099|22nd of July|July the 22nd|22JUL2099|22jul|Jul-22|July-22|7/22-7/25|7/22-25|
7/22 - 7/25|7/22 to 7/25|July 22-25|7/22 thru 7/25|7/22/|7/22:|7/22am|7/22 @ 1400|7/22@1400|7/22 0800|7 /22|7/ 22|
7 / 22|July, 2099|July of 2099|7/2099|07/2099|7-2099|Jul '99|7/99|July 99|the 22nd|22nd|10/15|8/87|11/17|2/28|3/4"""
DATE_FRAMES = (
    "pt seen on {} for f/u.", "PT ADMITTED {} FROM OSH.", "cath done {}, stent x2.", "LAST BM {}.", "{}: family meeting held.",
    "ekg {} unchanged", "NEXT DOSE DUE {}", "s/p cabg {}", "extubated {} without difficulty", "Labs ({}) reviewed.",
)  # fmt: skip
NAME_FRAMES = (
    "wife {F} called and was updated.", "SPOKE WITH SON {F} RE: PLAN.", "dtr {F} at bedside this am.", "seen by dr {L} today.",
    "D/W DR. {L}, WILL CONT LASIX.", "Per {F} RN, pt slept well.", "{F} from case management aware.", "nephew-{F} called x2",
    "PT'S FRIEND {F} VISITED.", "{L}, {F} RN", "called sister {F} at home", "pt asking for {F} all night.",
    "SW {F} {L} following for placement.", "PCP is Dr {L}.", "pt's daughter, {F} {L}, is hcp.", "{F} (daughter) called",
)  # fmt: skip
PLACE_FRAMES = (
    "pt lives in {P} with wife.", "TRANSFERRED FROM {P} HOSPITAL FOR CATH.", "pt from {P}, admitted via ER.",
    "seen at {P} ER last night", "d/c to {P} rehab when stable", "family driving in from {P} tomorrow.",
    "resides at {P} nursing home", "WAS AT {P} GENERAL X 3 DAYS", "med flighted from {P}.", "lives alone in {P}, independent.",
    "Transfer to {P} for surgery.", "pt is from {P} originally", "went to {P} ED with cp", "home is in {P} near the lake",
)  # fmt: skip
CONTACT = (
    ("call wife at (212) 476-8356 if needed", "476-8356"), ("wife's cell 212 476 8356", "476 8356"),
    ("dtr 212- 476- 8356", "476- 8356"), ("son 2124768356", "2124768356"), ("ph 476 8356 (home)", "476 8356"),
    ("cardiology x4567 aware", "x4567"), ("Pager #54321", "54321"), ("PG 33445 for questions", "33445"),
    ("page at 5-4321", "5-4321"), ("1-800-555-1212", "555-1212"), ("TEL 410/555-0199", "555-0199"),
    ("MRN 1234567", "1234567"), ("MR# 123-45-67", "123-45-67"), ("acct # A12345", "A12345"),
    ("member ID XJ-123456", "XJ-123456"), ("policy no. 12345678", "12345678"), ("ref #AB12-3456", "AB12-3456"),
    ("SSN 123 45 6789", "123 45 6789"), ("SS# 123.45.6789", "123.45.6789"), ("ip 10.0.0.12 on chart", "10.0.0.12"),
    ("device fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"), ("see http://example.org/a?b=1", "example.org"),
    ("email john.doe@example.com", "john.doe@example.com"), ("medicaid # 99887766A", "99887766A"),
    ("lives at 12 oak st apt 4b", "12 oak st"), ("LIVES AT 1234 N MAIN STREET, APT 5", "1234 N MAIN STREET"),
    ("home: 55 Elm Rd, Towson, MD 21204", "21204"), ("zip 21204-1234", "21204-1234"), ("PO Box 123", "Box 123"),
)  # fmt: skip


def _stands(value: str, out: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", out) is not None


def grids(rnd: random.Random) -> list[tuple[str, str, str, list[str]]]:
    """(grid, shape, text, values that must not stand in the output)."""
    items: list[tuple[str, str, str, list[str]]] = []
    for shape in (s.strip() for s in DATE_SHAPES.replace("\n", "").split("|")):
        for form in {c(shape) for c in CASES}:
            core = re.sub(r"^the\s+", "", form, flags=re.IGNORECASE)
            items += [("date", shape, f.format(form), [core]) for f in DATE_FRAMES]
    first = sorted(lexicon.FIRST)
    last = sorted(lexicon.LAST - lexicon.FIRST)
    for frame in NAME_FRAMES:
        for kind in ("strong", "maybe"):  # census names on no word list, and those that are also words
            firsts = [w for w in rnd.sample(first, 400) if R._name_kind(w) == kind] or first
            lasts = [w for w in rnd.sample(last, 400) if R._name_kind(w) == kind] or last
            for _ in range(8):
                f, surname = rnd.choice(firsts), rnd.choice(lasts)
                for case in CASES:
                    up = frame.split()[0].isupper()
                    vals = [(case(f), "{F}"), (case(surname), "{L}")]
                    text = frame.format(F=vals[0][0], L=vals[1][0])
                    text = text.upper() if up else text
                    items.append((f"name ({kind})", frame, text, [v.upper() if up else v for v, k in vals if k in frame]))
    places = sorted(lexicon.PLACES)
    for frame in PLACE_FRAMES:
        for _ in range(20):
            place = rnd.choice(places)
            for case in CASES:
                up = frame.split()[0].isupper()
                value = place.upper() if up else case(place)
                items.append(("place", frame, frame.format(P=value), [" ".join(re.findall(r"[A-Za-z]{3,}", value))]))
    items += [("contact and id", text, text, [value]) for text, value in CONTACT]
    return items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--show", type=int, default=3, help="examples printed per leaking shape")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    items = grids(random.Random(args.seed))
    with TextScrubber(TextSettings(workers=2), key=b"grid-key-0123456789abcdef0123456789") as s:
        out, _ = s.scrub(pa.array([t for _, _, t, _ in items]), pa.array([17] * len(items), pa.int32()))
    total: Counter[str] = Counter()
    leaked: Counter[str] = Counter()
    shapes: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for (grid, shape, text, values), o in zip(items, out.to_pylist(), strict=True):
        total[grid] += 1
        if any(_stands(v, o or "") for v in values if v):
            leaked[grid] += 1
            shapes[(grid, shape)].append((text, o or ""))
    for grid in total:
        print(f"{grid:<16} leaked {leaked[grid]:>4} / {total[grid]:<5} ({100 * leaked[grid] / total[grid]:.1f} %)")
    for (grid, shape), rows in sorted(shapes.items()):
        print(f"  {grid}: {shape!r} leaks in {len(rows)}")
        for text, o in rows[: args.show]:
            print(f"      {text!r} -> {o!r}")


if __name__ == "__main__":
    main()
