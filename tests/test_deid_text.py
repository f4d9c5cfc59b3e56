"""Free-text de-identification with the real Presidio and the real spaCy model (no mocks).

Worker processes are spawned, so helpers the workers import (the network guard, the broken recognizer)
live at module level here and are named in ``TextSettings.extra_recognizers``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cohortsync.deid import recognizers as R
from cohortsync.deid.evalset import evaluate, make_evalset
from cohortsync.deid.text import SCRUB_FAILED, NameSurrogates, TextScrubber, TextScrubError, TextSettings
from cohortsync.errors import ConfigError, InputError

KEY = b"test-key-0123456789abcdef"
RAISE_MARKER = "ZZRAISEZZ"
KILL_MARKER = "ZZKILLZZ"


# --- helpers imported by the worker processes ------------------------------------------------------


class _NetworkUsed(RuntimeError):
    pass


def _guard_sockets() -> None:
    """Make any network use in this process fail loudly (and count as an analysis failure)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _NetworkUsed("network access attempted")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def network_guard() -> list[Any]:
    """Extra-recognizer factory: installs the guard in the worker, adds no recognizer."""
    _guard_sockets()
    return []


def broken_recognizers() -> list[Any]:
    """A recognizer that raises on one marker and kills its process on another."""
    from presidio_analyzer import LocalRecognizer

    class Broken(LocalRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: Any, nlp_artifacts: Any = None) -> list[Any]:
            if KILL_MARKER in text:
                os._exit(3)
            if RAISE_MARKER in text:
                raise ValueError("deliberately broken")
            return []

    _guard_sockets()
    return [Broken(supported_entities=["BROKEN"], name="Broken")]


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evalset() -> Any:
    return make_evalset(320)


@pytest.fixture(scope="module")
def scrubber(evalset: Any) -> Iterator[TextScrubber]:
    s = TextSettings(workers=2, extra_recognizers=("test_deid_text:network_guard",))
    with TextScrubber(s, KEY, deny_list=evalset.known_phi) as scr:
        yield scr


def scrub1(scr: TextScrubber, texts: Sequence[str | None], shift: int | None = 10) -> list[str | None]:
    out, _ = scr.scrub(pa.array(texts, pa.string()), pa.array([shift] * len(texts), pa.int32()))
    return list(out.to_pylist())


# --- quality on the labelled set ----------------------------------------------------------------------


def test_recall_and_precision_on_the_evaluation_set(scrubber: TextScrubber, evalset: Any) -> None:
    rep = evaluate(scrubber, evalset.notes)
    assert rep.notes >= 300
    assert rep.failures == 0
    # Close to today's figures (1.000 / 0.994, NAME 0.995): a rule that loses what worked fails here.
    assert rep.overall.recall >= 0.998, rep.format()
    assert rep.by_category["NAME"].recall >= 0.99, rep.format()
    for cat in ("DATE", "IDENTIFIER"):
        assert rep.by_category[cat].recall >= 0.999, rep.format()
    assert rep.overall.precision >= 0.99, rep.format()
    # Every kind but names only in prose (other_name, 0.980) holds 0.998 or more (a lost "brother Will" is 0.991).
    assert all(sc.recall >= 0.998 for kind, sc in rep.by_kind.items() if kind != "other_name"), rep.format()
    assert rep.keep_damaged == 0, rep.format()


def test_scrubbed_notes_hold_none_of_their_phi(scrubber: TextScrubber, evalset: Any) -> None:
    notes = evalset.notes[:60]
    out = scrub1(scrubber, [n.text for n in notes], shift=17)
    leaked = []
    for note, new in zip(notes, out, strict=True):
        assert new is not None
        for sp in note.phi:
            value = note.text[sp.start : sp.end]
            if len(value) >= 4 and re.search(r"(?<![\w/.-])" + re.escape(value) + r"(?![\w/-])", new):
                leaked.append(sp.kind)
    # Dates may coincide with their shifted value only if the shift is 0; names may collide with a surrogate.
    assert not [k for k in leaked if k not in ("patient_name", "clinician_name", "relative_name")], leaked


def test_clinical_content_survives(scrubber: TextScrubber) -> None:
    text = (
        "BP 120/80, HR 88, Hgb 13.2 g/dL, WBC 11.2, K 4.1, A1c 7.4%. Metformin 500 mg PO BID, lisinopril 5 mg "
        "daily, 1/2 tab if dizzy. Pain 4/10, strength 5/5, 2/6 murmur. ICD-10 E11.9, I10, N18.30. CT chest and "
        "MRI brain ordered in the ED; IV fluids; seen by PT. MD to follow. SpO2 97% on RA. Follow-up in 2 weeks."
    )
    [out] = scrub1(scrubber, [text])
    assert out == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Seen on 2021-03-04.", "Seen on 2021-03-14."),
        ("Seen on 03/04/2021.", "Seen on 03/14/2021."),
        ("Seen on 3/4/21.", "Seen on 3/14/21."),
        ("Seen on March 4, 2021.", "Seen on March 14, 2021."),
        ("Seen on 04-Mar-2021.", "Seen on 14-Mar-2021."),
        ("Seen on 28-FEB-21.", "Seen on 10-MAR-21."),
        ("Return on 07/11.", "Return on 07/21."),
        ("Return Jun 11.", "Return Jun 21."),
        ("Return 11 June.", "Return 21 June."),
        ("Return June 25th.", "Return July 5th."),
        ("Since March 2021.", "Since March 2021."),
        ("Admitted 12/28/2020 to 1/2/21.", "Admitted 01/07/2021 to 1/12/21."),
        ("Seen 12/28/20, on 12/28 and 12/2/20.", "Seen 01/07/21, on 01/07 and 12/12/20."),
        ("Seen 1/2/21 and 4 Mar 2021.", "Seen 1/12/21 and 14 Mar 2021."),
    ],
)
def test_dates_shift_by_the_row_offset_in_their_own_format(scrubber: TextScrubber, text: str, expected: str) -> None:
    [out] = scrub1(scrubber, [text], shift=10)
    assert out == expected


def test_each_row_shifts_by_its_own_offset_and_null_offset_tags(scrubber: TextScrubber) -> None:
    texts = pa.array(["Seen 2021-03-04."] * 3, pa.string())
    out, stats = scrubber.scrub(texts, pa.array([1, -1, None], pa.int32()))
    assert out.to_pylist() == ["Seen 2021-03-05.", "Seen 2021-03-03.", "Seen [DATE]."]
    assert stats.distinct == 1 and stats.entities["DATE"] == 3


def test_names_get_consistent_keyed_surrogates(scrubber: TextScrubber) -> None:
    rows = [
        "Patient: Rose Green. Ms. Green reports improvement; Rose Green will return.",
        "Rose Green was seen by Dr. Will Hope.",
        "Signed by Will Hope, MD",
    ]
    out = scrub1(scrubber, rows)
    assert all(o is not None and "Rose" not in o and "Green" not in o and "Hope" not in o for o in out)
    sur = NameSurrogates(KEY)
    rose = sur.name_for("Rose Green")
    hope = sur.name_for("Will Hope")
    assert out[0] is not None and out[0].count(rose) == 2
    assert out[0].count(sur.name_for("Green")) >= 1
    assert out[1] == f"{rose} was seen by Dr. {hope}."
    assert out[2] == f"Signed by {hope}, MD"
    # Same name, same key: same surrogate; another key: (almost surely) another.
    assert NameSurrogates(KEY).name_for("rose green") == rose.lower()
    assert NameSurrogates(b"another key").name_for("Rose Green") != rose


def test_a_lone_first_name_matches_the_full_names_surrogate(scrubber: TextScrubber) -> None:
    [out] = scrub1(scrubber, ["Patient: Rose Green (Green, Rose). Rose reports less pain."])
    first, last = NameSurrogates(KEY).name_for("Rose Green").split()
    assert out == f"Patient: {first} {last} ({last}, {first}). {first} reports less pain."


def test_lowercase_names_and_names_that_are_words(scrubber: TextScrubber) -> None:
    text = "pt: faith price, mrn 55512345. seen with dr. brown. Sincerely,\nWill Hope"
    [out] = scrub1(scrubber, [text])
    assert out is not None
    for word in ("faith", "price", "brown", "Will", "Hope", "55512345"):
        assert word not in out


def test_eponyms_and_devices_the_model_calls_persons_are_kept(scrubber: TextScrubber) -> None:
    text = "Pt is in hospice care, has a Hickman Cath rt fem. Await Swallow Study. Cheyne-Stokes breathing noted."
    assert scrub1(scrubber, [text]) == [text]
    terms = ["PASSY MUIR VALVE TOLERATED FOR ABOUT 30 MINUTES", "pt. had two inline passy-muir trials x30 mins",
             "endoscopy showed mallory weiss tear. no active bleeding", "FOR 6 HRS...CHEYNE -STOKE RESPS .PERSISTENT",
             "on mech vent. parkinson tremor noted."]  # fmt: skip
    assert scrub1(scrubber, terms) == terms
    [out] = scrub1(scrubber, ["daughter Mallory called, Dr. Weiss aware"])  # the same names as names
    assert out is not None and "Mallory" not in out and "Weiss" not in out, out


def test_drug_names_given_as_drugs_are_not_names_but_the_same_name_is(scrubber: TextScrubber) -> None:
    """A brand that is also a census first name (Allegra) stays where it is given as a drug, model or not;
    the same word after a relation is a person. A drug on no name list is never one (Oxycontin)."""
    drug, person = scrub1(scrubber, ["SKIN ITCHY. GIVEN ALLEGRA PO WITH GOOD EFFECT.", "daughter Allegra called twice"])
    assert drug == "SKIN ITCHY. GIVEN ALLEGRA PO WITH GOOD EFFECT."
    assert person is not None and "Allegra" not in person
    for text in ("spoke with Camila and Kendrick at length", "sister on phone: Dona aware"):  # names that are brands
        [named] = scrub1(scrubber, [text])
        assert named is not None and not {"Camila", "Kendrick", "Dona"} & set(re.findall(r"\w+", named)), named
    [out] = scrub1(scrubber, ["She takes Oxycontin and Ativan regularly at home."])
    assert out == "She takes Oxycontin and Ativan regularly at home."


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("Call +1 (555) 201-3344 today", "[PHONE]"),
        ("Call 1-555-201-3344 today", "[PHONE]"),
        ("Fax 555.201.3344 today", "[PHONE]"),
        ("SSN 123-45-6789 on file", "[SSN]"),
        ("MRN: A1234567 on file", "[MRN]"),
        ("HAR# 99887766 on file", "[ACCOUNT]"),
        ("Member ID XQW123456789 on file", "[ACCOUNT]"),
        ("Pacemaker S/N: PJN123456 placed", "[SERIAL]"),
        ("Prescriber DEA# AB1234563 noted", "[LICENSE]"),
        ("Driver license no. D1234567 seen", "[LICENSE]"),
        ("Email jane.doe@example.com now", "[EMAIL]"),
        ("Lives at 12 Oak Street, Springfield, IL 62704 alone", "[ADDRESS]"),
        ("Zip code 62704 only", "[ZIP]"),
        ("A 93-year-old man", "90+"),
    ],
)
def test_identifiers_become_tags(scrubber: TextScrubber, text: str, tag: str) -> None:
    [out] = scrub1(scrubber, [text])
    assert out is not None and tag in out
    assert not re.search(r"\d{4}", out.replace("90+", "")), out


def test_deny_list_is_case_insensitive_whole_words(scrubber: TextScrubber, evalset: Any) -> None:
    facility = next(t.text for t in evalset.known_phi if t.entity == "FACILITY")
    [a, b] = scrub1(scrubber, [f"Transferred from {facility.upper()} today.", f"{facility}s are not ours."])
    assert a == "Transferred from [FACILITY] today."
    # The deny-list term does not match inside "...Hospitals" (the facility rule may still take the name before it).
    assert b is not None and "[FACILITY]s" not in b and facility.split()[-1] + "s" in b


def test_deny_list_skips_single_common_words_and_scales() -> None:
    deny = R.DenyIndex(["Normal", "Mobile", "Springfield", "Mercy General", R.DenyTerm("St. Agnes", "FACILITY")])
    assert deny.find("normal sinus rhythm, mobile") == []
    assert deny.find("At MERCY GENERAL, lives in springfield; St Agnes") == [
        (3, 16, "KNOWN_PHI"), (27, 38, "KNOWN_PHI"), (40, 48, "FACILITY")
    ]  # fmt: skip
    big = R.DenyIndex(f"{n} Oak Street" for n in range(100_000))
    text = "Lives at 99123 Oak Street. " * 200
    assert len(big.find(text)) == 200
    # Scales by lookup, not by scanning terms: each word of the text meets at most one candidate
    # term of the 100,000 (a structural check; timings belong in benchmarks/).
    words = [m.group().casefold() for m in R._DENY_TOKEN.finditer(text)]
    assert sum(len(big.index.get(w, ())) for w in words) <= len(words)


def test_nulls_and_empty_strings_pass_through(scrubber: TextScrubber) -> None:
    texts = pa.array([None, "", "   ", "Dr. Smith", None], pa.large_string())
    out, stats = scrubber.scrub(texts, pa.array([1, 2, None, 4, None], pa.int32()))
    assert out.type == pa.large_string()
    got = out.to_pylist()
    assert got[:3] == [None, "", "   "] and got[4] is None
    assert got[3] is not None and "Smith" not in got[3]
    assert (stats.rows, stats.nulls, stats.empty, stats.distinct, stats.failures) == (5, 2, 2, 1, 0)


def test_repeated_values_are_analysed_once(scrubber: TextScrubber) -> None:
    texts = pa.array(["Dr. Smith"] * 500 + ["Mr. Jones"] * 500, pa.string())
    out, stats = scrubber.scrub(texts, pa.array([5] * 1000, pa.int32()))
    assert stats.distinct == 2 and stats.entities["PERSON"] == 1000
    assert len(set(out.to_pylist())) == 2


def test_only_us_clinical_recognizers_are_loaded() -> None:
    from cohortsync.deid.text import _Worker

    worker = _Worker(TextSettings(), KEY, [])
    names = {type(r).__name__ for r in worker.analyzer.registry.recognizers}
    for unwanted in ("Crypto", "Iban", "Nhs", "Uk", "Au", "In", "Sg", "Es", "It", "Pl", "UsBank", "Phone", "Email"):
        assert not [n for n in names if n.startswith(unwanted) and n.endswith("Recognizer")], names
    assert worker.nlp.pipe_names == ["ner"]  # no tagger, parser, attribute ruler or lemmatizer


def test_a_missing_model_is_a_config_error_not_a_download() -> None:
    with pytest.raises(ConfigError, match="not_a_model_xyz"):
        TextScrubber(TextSettings(model="not_a_model_xyz", workers=1), KEY)


def test_string_view_input_keeps_its_type(scrubber: TextScrubber) -> None:
    out, _ = scrubber.scrub(pa.array(["Dr. Smith", None], pa.string_view()), pa.array([1, 1], pa.int32()))
    assert out.type == pa.string_view() and "Smith" not in str(out[0])


def test_bad_input_errors_carry_no_values(scrubber: TextScrubber) -> None:
    with pytest.raises(InputError) as e:
        scrubber.scrub(pa.array(["Jane Roe"]), pa.array([1, 2], pa.int32()))
    assert "Jane" not in str(e.value)
    with pytest.raises(InputError):
        scrubber.scrub(pa.array([1, 2]), pa.array([1, 2], pa.int32()))
    assert "test-key" not in repr(scrubber)


def test_analysis_failure_never_passes_text_through() -> None:
    """Policy: a value whose analysis raises becomes SCRUB_FAILED and is counted; a dead worker fails the call."""
    s = TextSettings(workers=1, extra_recognizers=("test_deid_text:broken_recognizers",))
    with TextScrubber(s, KEY) as scr:
        texts = ["Dr. Smith is fine", f"Jane Roe {RAISE_MARKER} 555-201-3344", None]
        out, stats = scr.scrub(pa.array(texts), pa.array([1, 1, 1], pa.int32()))
        assert out.to_pylist()[1] == SCRUB_FAILED
        assert out.to_pylist()[0] is not None and "Smith" not in out.to_pylist()[0]
        assert stats.failures == 1
        with pytest.raises(TextScrubError) as e:
            scr.scrub(pa.array([f"Jane Roe {KILL_MARKER}"]), pa.array([1], pa.int32()))
        assert "Jane" not in str(e.value) and KILL_MARKER not in str(e.value)
        with pytest.raises(TextScrubError):  # the scrubber stays closed rather than half-working
            scr.scrub(pa.array(["x"]), pa.array([1], pa.int32()))


def test_no_network_in_the_parent_either() -> None:
    """The benchmark's default Presidio e-mail recognizer uses tldextract: it must use its bundled list."""
    import tldextract

    saved = (socket.socket.connect, socket.create_connection, socket.getaddrinfo)
    try:
        _guard_sockets()
        assert tldextract.extract("jane.doe@mail.example.co.uk").suffix == "co.uk"
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved  # type: ignore[method-assign]


# --- date shifting as a property -----------------------------------------------------------------------

FORMATS = [
    ("%Y-%m-%d", False),
    ("%m/%d/%Y", False),
    ("%-m/%-d/%y", False),
    ("%B %-d, %Y", False),
    ("%d-%b-%Y", True),
    ("%b %-d, %Y", True),
    ("%-d %b %Y", True),
    ("%b %-d", True),
    ("%m/%d", False),
    ("%-d %B", False),
    ("%B %-d", False),
    ("%-m / %-d", False),
    ("%-d%b", True),
]


@settings(max_examples=400)
@given(
    d=st.dates(dt.date(1931, 1, 1), dt.date(2024, 12, 31)),
    fmt=st.sampled_from(FORMATS),
    days=st.integers(-1500, 1500).filter(lambda x: x != 0),
)
def test_date_shift_round_trips(d: dt.date, fmt: tuple[str, bool], days: int) -> None:
    pattern, abbreviated = fmt
    has_year = "%Y" in pattern or "%y" in pattern
    has_day = "%d" in pattern or "%-d" in pattern
    if not has_year:  # shifted on a 365-day calendar
        d = d.replace(year=R.NO_YEAR_CYCLE, day=min(d.day, 28) if d.month == 2 else d.day)
        new = dt.date(R.NO_YEAR_CYCLE, 1, 1) + dt.timedelta(days=(d.timetuple().tm_yday - 1 + days) % 365)
    else:
        new = d + dt.timedelta(days=days)
    if "%y" in pattern:
        assume(1928 < new.year <= 2026)
    if abbreviated:
        assume(5 not in (d.month, new.month))  # "May" is both full and short: written back as a full name
    text = d.strftime(pattern)
    shifted = R.shift_date_text(text, days)
    assert shifted is not None
    parsed = R.parse_date(shifted)
    assert parsed is not None and parsed.fmt == R.parse_date(text).fmt  # type: ignore[union-attr]
    if has_day:
        assert (parsed.date.month, parsed.date.day) == (new.month, new.day)
    if has_year:
        assert parsed.date.year == new.year
    back = R.shift_date_text(shifted, -days)
    assert back is not None
    # Exact, except that zero padding is a guess when no part shows it (10/10 -> 9/1 or 09/01).
    assert re.sub(r"\b0(\d)", r"\1", back) == re.sub(r"\b0(\d)", r"\1", text)
    parts = [v for k, v in parsed.match.groupdict().items() if k in ("m", "d") and v]
    if any(len(p) == 1 or p.startswith("0") for p in parts):
        assert back == text


@given(st.text(alphabet="0123456789/-. ", max_size=12))
def test_numbers_that_are_not_dates_are_left_alone(s: str) -> None:
    assume(R.parse_date(s) is None)
    assert R.shift_date_text(s, 10) is None


def test_a_birthday_past_89_is_an_age() -> None:
    assert _found("family here for her 90th birthday", "AGE") == ["90th"]
    assert _found("PARTY FOR HIS 101ST BDAY", "AGE") == ["101ST"]
    assert not _found("her 80th birthday", "AGE") and not _found("wt at the 90th percentile", "AGE")
    assert not _found("pain central in chest", "LOCATION")


def test_counts_written_as_ordinals_are_not_dates() -> None:
    for text in ("2nd unit prbc hung", "transferred to the 11th floor", "wt at the 10th percentile", "12th rib fx",
                 "her 3rd attempt", "14th day of abx"):  # fmt: skip
        assert not _found(text, R.DATE), text


@pytest.mark.parametrize("text", ["strength 5/5", "pain 4/10", "1/2 tab", "BP 120/80", "2/6 murmur", "10/10 pain"])
def test_fractions_and_scores_are_not_dates(text: str) -> None:
    found = [r for rec in R.build_recognizers() for r in rec.analyze(text, None)]
    assert not [r for r in found if r.entity_type == R.DATE], text


# --- recall by construction (issue 9): every rule family and each clinical exception ---------------------


def _found(text: str, entity: str | None = None) -> list[str]:
    """Every span the rule recognizers report (no NER), as text."""
    out = [r for rec in R.build_recognizers() for r in rec.analyze(text, None)]
    return [text[r.start : r.end] for r in out if entity is None or r.entity_type == entity]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("WENT TO RADIATION 7/22 AND RETURNED", "7/22"),
        ("echo 8/87 showing EF 20-25%", "8/87"),
        ("s/p MI 7/81-ECHO=EF 40%", "7/81"),
        ("ceftaz rec'd 8/2-8/10 then stopped", "8/10"),
        ("ceftaz rec'd 8/2-8/10 then stopped", "8/2"),
        ("cultures sent 6/14- if not will send", "6/14"),
        ("returned to OR on 7-8 for coiling", "7-8"),
        ("LITHIUM TOXICITY 9/2/92.", "9/2/92"),
        ("admitted JULY 22 with CHF", "JULY 22"),
        ("d/c'd to nursing home in sept. and readmitted", "sept."),
        ("drawn from the A-line on the 11th.", "11th"),
        ("seen on 10/15 by cardiology", "10/15"),
        ("OR 6/10 for a CABG", "6/10"),
        ("HAD TREATMENTS 10/03/10/04 AND DUE FOR XRT", "10/03"),
        ("HAD TREATMENTS 10/03/10/04 AND DUE FOR XRT", "10/04"),
        ("11/21.93\nneuro: alert", "11/21.93"),
        ("d/c heparin at 0630 2/31", "2/31"),
        ("on the vent since 7/22 when", "7/22"),  # a date word beats a ventilator word before it
        ("MECH VENT VIA TRACH (PLACED 8/14). AC", "8/14"),
        ("s/p MI 8/88, 30% EF", "8/88"),
        ("seen on 10/5 by cardiology", "10/5"),
        ("cxr 7/22/ showed effusion", "7/22"),  # a trailing slash
        ("ceftaz 7/22 -7/30 then stopped", "7/30"),  # a range with a space before the dash
        ("cx 7/22x2 neg", "7/22"),  # a count glued on
        ("line placed 7/22am", "7/22"),
        ("ADMITTED 22-JUL FROM OSH", "22-JUL"),  # day and month name with a dash, no year
        ("S/P CABG OCT 93 AT OSH", "OCT 93"),  # month name and a two-digit year that is no day
        ("MI Jul '87", "Jul '87"),
        ("admit 07-22 from OSH", "07-22"),  # a leading zero: no range is written so
        ("Jul 22: family meeting held", "Jul 22"),  # a colon after the day is no time of day
        ("22 JUL: FAMILY MEETING", "22 JUL"),
        ("LAST BM Jul '99.", "Jul '99"),
        ("CATH DONE 7/22AM, STENT X2", "7/22"),  # a capital AM glued on
        ("pt seen on 22jul for f/u", "22jul"),  # day and month name glued
        ("PT ADMITTED 3NOV FROM OSH", "3NOV"),
        ("cath done 7 /22, stent x2", "7 /22"),  # spaces around the slash
        ("LAST BM 7/ 22.", "7/ 22"),
        ("s/p cabg 7 / 22", "7 / 22"),
        ("seen in clinic 7-2099", "7-2099"),  # month and year with a dash
        ("pt seen on the 22nd for f/u", "22nd"),
        ("PT ADMITTED 22nd FROM OSH.", "22nd"),  # an ordinal from 10th to 31st is a day anywhere
        ("ekg THE 22ND unchanged", "22ND"),
        ("cxr Dec.2 showed effusion", "Dec.2"),  # a month's abbreviation, its full stop, the day
        ("pt wants to be home for Christmas", "Christmas"),  # a holiday names its day
        ("FAMILY VISITED OVER THANKSGIVING", "THANKSGIVING"),
        ("fell the day after new year's", "new year's"),
        ("MOTHER'S DAY VISIT PLANNED", "MOTHER'S DAY"),
        ("home by Easter Sunday", "Easter Sunday"),
    ],
)
def test_dates_in_any_shape_and_case_are_found(text: str, value: str) -> None:
    assert value in _found(text, R.DATE), _found(text)


@pytest.mark.parametrize(
    "text",
    [
        "strength 5/5 throughout",
        "MAE, grips 4/5 bilat",
        "5/5",
        "pain 4/10 after morphine",
        "rates pain 7/10",
        "1/2 tab PO",
        "3/4 of the dose",
        "D5 1/2 NS at 100cc",
        "BP 120/80",
        "2/6 murmur at LSB",
        "CPAP 5/5 overnight",
        "PS 10/5 with FiO2 .40",
        "HR 60-70, 7.22 and falling",
        "x 2-3 days",
        "Q 1/2 hr",
        "I:E 1/2/1/2",
        "PS 10/5/5 overnight",
        "given 1/2/3/4 of the dose",
        "PSV increased to 10/5 overnight",  # ventilator settings, even after "to" or "on"
        "remained on 5/5 PSV/CPAP",
        "on vent 10/5/50% pt tolerating",
        "CPAP/PSV 12/10/40% drawing volumes",
        "with flowby 6/2. Spont vols 500",
        "ps 10/peep 5/40%.",
        "cpap/ps (10/5) c 40% fio2",
        "changed to 1/2 NS at 100cc/hr",  # a fraction before a dose word, even after "to"
        "formula changed to 3/4 str Nepro",
        "C/O 5/10 incisional pain",  # pain named after the pair
        "developed severe 10/10 angina",
        "WILL F/U IN NEXT 1-2 DAYS",  # ranges and decimals before a unit
        "SAT>95 ON 4-5 L NC",
        "cont on 7.5 peep and 50%",
        "CONTROLLED ON 12.5 LOPRESSOR BID",
        "HR 80 -5/5 strength",
        "given 1/2am dose",
        "UO 3 dec from yesterday",
        "SBP MAY 90S",
        "HR 60-70 and temp 37.5",
        "CI 5.06 and tmin 06.2, ca~1.08",
        "on PSV 10/ 5 PEEP 40% fio2",  # a spaced pair after a ventilator word
        "ABG 7.36/ 29/ 103/ -7/ 17 on AC",  # one link of a blood gas chain
        "given 1-2000 ml bolus",  # a range before a unit is no month and year
        "3dec from yesterday",  # lower-case "dec" glued is "decreased"
        "gave 2may if needed",
        "rec'd the 2nd unit of prbc",  # an ordinal before a noun is no day
    ],
)
def test_each_clinical_exception_is_not_a_date(text: str) -> None:
    assert not _found(text, R.DATE), (text, _found(text, R.DATE))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("HOUSE STAFF mary souza AWARE.", ["mary", "souza"]),
        ("talked with helen from case management", ["helen"]),
        ("communication with husband milovan.", ["milovan"]),
        ("social: son bill called. later bill called again; the bill was paid", ["bill", "bill"]),
        ("BEA AND DRS JOSEPH AND ROBBINSON AWARE", ["ROBBINSON"]),
        ("Q. LANDER RRT", ["LANDER"]),
        ("spoke w/ Dr. Foley today", ["Foley"]),
        ("Hank Przybylo (son) cell# on chart", ["Hank", "Przybylo"]),
        ("Sons Smokey, Morris and Roger in to visit.", ["Smokey", "Morris", "Roger"]),
        ("DAN A. FORMAN-LYONS, RRT", ["DAN", "FORMAN-LYONS"]),
        ("bronched by dr. noone today", ["noone"]),  # after "dr" a vocabulary word is a name too
        ("spoke w/dr rizzo, dr small today", ["small"]),
        ("KEEP ROMERO FAMILY AWARE OF PLAN", ["ROMERO"]),  # a surname written as a name before "family"
        ("nsg (d. renna and j. o'brien) verified", ["o'brien"]),  # an initial before a word on no list
        ("Reported to D. Phyl. Coags ok.", ["Phyl"]),
        ("Reported to J. Long at 3pm", ["Long"]),  # a capital initial before a name that is a word
        ("seen by Kowalczyk, PT today; JANE KOWALSKI OT", ["Kowalczyk", "KOWALSKI"]),  # before a therapist's credential
        ("Accompanied by brother Will. Transport home arranged", ["Will"]),  # a stop word after a relation
        ("CALLED GREEN (DAUGHTER) AT HOME", ["GREEN"]),  # a surname that is a word before "(daughter)"
        ("SPOKE WITH DORIS DAY RE: PLAN", ["DORIS", "DAY"]),  # a role word after a first name is a surname
        ("Baker, PT to follow up today", ["Baker"]),  # a capitalised surname that is a word before an ambiguous credential
        ("nephew-Therese called x2; DTR-JEAN IN", ["Therese", "JEAN"]),  # a relation glued on by a dash
        ("pt's daughter, ted ganes, is hcp; SISTER HOLLY CALLED", ["ted", "ganes", "HOLLY"]),  # first names shaped as verbs
        ("Rita from case management aware; SAL FROM SW CALLED", ["Rita", "SAL"]),  # a first name from a service
    ],
)
def test_names_by_census_lists_cues_and_case(text: str, names: list[str]) -> None:
    found = " ".join(_found(text, R.PERSON))
    for name in names:
        assert re.search(r"\b" + re.escape(name) + r"\b", found), (text, found)


@pytest.mark.parametrize(
    "text",
    [
        "wife will call tomorrow",
        "c/o pain and back ache",
        "DR AWARE. MD AWARE OF K 3.2",
        "Neuro: alert, MAE, follows commands",
        "mild MR. Prior study reviewed",
        "3 WAY FOLEY IN PLACE",
        "Return precautions, RN to follow",
        "HOUSE STAFF AWARE",
        "dr aware of plan, dr. in to see pt, dr rounds done",
        "E. coli in urine, S. aureus in sputum",
        "lots of family support; the whole family is here; LOSS FAMILY MEETING",
        "fluid d/c'd. re'd vanc",
        "called out to floor with stabel dose of milrinone",  # a rare surname one typo from a note word
        "REMAINS ON RA STAS 99%",
        "pt's husband went home; daughter brought clothes",  # verbs after a relation word
        "husband worried, son-in-law here, wife feeling better",
        "MOVES BOTH LEGS EQUALLY MD AWARE; PATIENT WITH APHASIA, MD CALLED",  # an English word before a credential
        "If necessary, pt's dtr is hopeful",  # an English word before "pt's dtr"
        "GIVEN ALLEGRA PO FOR ITCHING; takes Oxycontin and Ativan; on cipro for uti",  # drugs
        "I SPOKE WITH HOUSE STAFF REGARDING SITE",  # a role after a phrase
        "SENT LATER TONIGHT. OVERALL, PT APPROX 1400 IN; FOCUS ON GETTING PT ON ORAL REGIMEN",  # PT is the patient
        "Has been examined by Neuro several times",  # a clinical word after a phrase
        "pain from surgery; drainage from PT site",
        "fields on L. Vent settings; I & O. Check K+; New A.line placed; SKIN CARE RN",
    ],
)
def test_clinical_words_are_not_names(text: str) -> None:
    assert not _found(text, R.PERSON), (text, _found(text, R.PERSON))


def test_rare_surnames_that_are_typos_of_note_words_need_a_cue() -> None:
    from cohortsync.deid import lexicon

    assert "stabel" in lexicon.RARE_LAST and R._name_kind("stabel") == "maybe"  # stable
    assert "masci" in lexicon.RARE_LAST and R._name_kind("Masci") == "strong"  # rare, but no typo of a word
    assert R._name_kind("healey") == "strong"  # near "healed"'s stem, but a common surname
    assert "stabel" in " ".join(_found("RN: Dr. stabel called", R.PERSON))  # with a cue it is still a name


def test_the_safe_list_is_large_and_excludes_census_only_names() -> None:
    from cohortsync.deid import lexicon

    assert len(lexicon.SAFE) > 100_000 and len(lexicon.LAST) > 80_000 and len(lexicon.FIRST) > 5_000
    assert "shoulders" in lexicon.SAFE and "intubated" in lexicon.SAFE  # inflections of dictionary words
    assert "souza" not in lexicon.SAFE and lexicon.is_strong_name("souza")
    assert "bill" in lexicon.SAFE and not lexicon.is_strong_name("bill")  # a name that is a word needs a cue
    # A gate that skips NER for values made of non-names asks is_not_name (VOCABULARY stays a subset of it).
    assert all(R.is_not_name(w) for w in ("neuro", "sats", "pneumonia", "mg", "q4h", "intubated", "120/80"))
    assert not any(R.is_not_name(w) for w in ("souza", "Przybylo", "bill", "Hope", "milovan"))
    assert not any(lexicon.is_strong_name(w) for w in ("neuro", "levo", "sats", "carevue"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("admitted to CALVERT HOSPITAL after fall", "CALVERT"),
        ("presented to holy cross hospital from home", "holy cross"),
        ("TAKEN TO LAUREL REGIONAL WHERE CK'S POS", "LAUREL REGIONAL"),
        ("pt taken to kernan hosp. by ambulance", "kernan"),
        ("married, lives in catonsville, husband at home", "catonsville"),
        ("LIVES WITH SON AND FAMILY IN ROCKVILLE.", "ROCKVILLE"),
        ("TRANSFERRED TO QUARTERMAIN 2 CP FREE", "QUARTERMAIN"),
        ("arrived via amb from kernan ew for eval", "kernan"),
        ("TO GO TO ST. MARY ON TUESDAY", "ST. MARY"),
        ("per U Maryland scale", "U Maryland"),
        ("transferred from Lally MICU overnight", "Lally"),
        ("had a heart transplant at Holy Cross. friend visited", "Holy Cross"),  # a hospital's name core
        ("went to franklin square for a scan", "franklin square"),
        ("PT MAY BE W/U BY GBMC FOR TRANSPLANT", "GBMC"),  # initialism of a listed hospital
        ("followed at the VAMC for years", "VAMC"),
        ("pt transferred to Sacred for rehab", "Sacred"),  # one word of a hospital's name after a place word
        ("came from Harbor this am", "Harbor"),
        ("son lives near Reisterstown now", "Reisterstown"),  # a town on no word list needs no cue
        ("pt lives alone in long branch, independent", "long branch"),  # English words after a cue only a place follows
        ("FAMILY DRIVING IN FROM PELL LAKE TOMORROW", "PELL LAKE"),
        ("med flighted from battle mountain.", "battle mountain"),
        ("seen at holts summit ER last night", "holts summit"),  # a place before a facility noun, any case
        ("WAS AT TULARE GENERAL X 3 DAYS", "TULARE"),
        ("f/u with cardiology at novant", "novant"),  # a hospital's one-word name on no word list, any case
        ("TRANSFERRED FROM FISHER FOR CATH", "FISHER"),  # ... or a word, after a cue only a place follows
        ("HUSBAND CEO OF IBM.  SMOKER", "IBM"),  # an employer after a word that names one
        ("WORKS AT BETHLEHEM STEEL AS WELDER", "BETHLEHEM STEEL"),
        ("family has a summer home in ocean city", "ocean city"),  # a home's place, a holiday's, a workplace's
        ("fell while vacationing in ocean city", "ocean city"),
        ("they were visiting from long branch", "long branch"),
        ("WIFE WORKS IN DUNDALK", "DUNDALK"),
        ("admitted from Brightview assisted living", "Brightview"),  # the kinds of home a patient comes from
        ("from Meadows group home", "Meadows"),
        ("HD at Fresenius dialysis center", "Fresenius"),
        ("FAMILY ARRIVED FROM THE EASTERN SHORE- DAUGHTER", "EASTERN SHORE"),  # regions smaller than a state
        ("moved from upstate NY last year", "upstate NY"),
        ("son lives in western Maryland", "western Maryland"),
        ("summers on Cape Cod", "Cape Cod"),
    ],
)
def test_places_by_gazetteer_and_context(text: str, value: str) -> None:
    found = " | ".join(_found(text, "LOCATION") + _found(text, "FACILITY"))
    assert value in found, (text, found)


def test_generic_care_places_are_not_facilities() -> None:
    for text in ("labs sent post dialysis", "During dialysis rhythm changed", "would want dialysis if indicated",
                 "transfer to cardiac rehab", "went to the general hospital", "go home today", "cath lab at 3",
                 "the holy cross on the wall", "a high point of the day", "PT HAS CHF AND COPD, SEE PMH",
                 "Sacred heart image", "GOING TO HARBOR", "FAMILY IN EARLY DURING SHIFT", "BC X 1 SENT FROM NEW TLC",
                 "transferred to floor", "moved to the unit", "WORKS FOR THE CITY", "pt works for himself",
                 "manager of ICU aware"):  # fmt: skip
        assert not _found(text, "FACILITY") + _found(text, "LOCATION"), text


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("Pager #54321 for questions", "PHONE"),
        ("PG 33445", "PHONE"),
        ("reached at beeper number 55037.", "PHONE"),
        ("call 212- 476- 8356 now", "PHONE"),
        ("daughter 301 944-5032 at home", "PHONE"),
        ("office x4517 anytime", "PHONE"),
        ("SSN 123 45 6789", "SSN"),
        ("plan # HX77812 active", "ACCOUNT"),
        ("reference no. AB-99812 sent", "ACCOUNT"),
        ("from 2001:db8:0:0:0:ff00:42:8329 today", "IP_ADDRESS"),
        ("from fe80::1ff:fe23:4567:890a today", "IP_ADDRESS"),
        ("see hospital.org/patients/123 for it", "URL"),
        ("ph 476 8356 (home)", "PHONE"),  # seven digits with a space after a phone word
        ("TEL 410/555-0199", "PHONE"),  # an area code before a slash
        ("page at 5-4321 when back", "PHONE"),  # an internal extension with its exchange digit
        ("call 4-8356 with results", "PHONE"),
        ("lives at 12 oak st apt 4b", "ADDRESS"),  # a street line in lower case after an address word
        ("LIVES ON 5 CEDAR LANE", "ADDRESS"),
    ],
)
def test_contact_and_identifier_shapes(text: str, entity: str) -> None:
    assert _found(text, entity), (text, _found(text))


def test_shift_times_and_doses_are_not_identifiers_or_pagers() -> None:
    for text in ("nursing note 1900-0700", "given x 1000 ml", "page 2 of 3", "Pager", "call 1-2 times a day",
                 "home on 2 l nc", "lives at home with 3 way foley"):  # fmt: skip
        assert not _found(text, "ID") + _found(text, "PHONE") + _found(text, "ADDRESS"), text


def test_a_rising_range_after_a_measure_is_no_phone_and_a_rhythm_run_no_street() -> None:
    for text in ("SVR 954-1183; CO 5", "TV IMPROVED TO 900-1000.", "pt voiding 575-1000 cc/hr"):
        assert not _found(text, "ID") + _found(text, "PHONE"), text
    for text in ("call 954-1183 for questions", "pager 944-5032", "HR 80 then home # 555-1234", "SVR 954-0183"):
        assert _found(text, "ID") + _found(text, "PHONE"), text  # a phone cue, or not a rising range
    for text in ("ONE 8 BEAT RUN OF VT NOTED", "1 15 SEC RUN SVT TO 150", "PT HAD 3 EPISODES ST IN 130'S"):
        assert not _found(text, "ADDRESS"), text
    assert _found("lives at 12 Mill Run Rd", "ADDRESS")


def test_states_countries_and_continents_stand_unless_they_name_a_facility(scrubber: TextScrubber) -> None:
    """Safe Harbor lets a state (and anything larger) stand; a town, a city-state and a facility do not."""
    kept = ["Niece lives in California, phone 858-492-5403", "ANOTHER SON WHO IS IN EUROPE AT PRESENT",
            "pt came to visit sister in Massachusetts", "a sister on Illinois was called"]  # fmt: skip
    for text, out in zip(kept, scrub1(scrubber, kept), strict=True):
        place = next(w for w in ("California", "EUROPE", "Massachusetts", "Illinois") if w in text)
        assert out is not None and place in out, (text, out)
    masked = {"services at Maryland Rehab, will notify": "Maryland", "per U Maryland scale": "Maryland",
              "lives in Catonsville now": "Catonsville", "moved to New York last year": "New York",
              "daughter Georgia visited": "Georgia", "lives in Washington now": "Washington"}  # fmt: skip
    for (text, value), out in zip(masked.items(), scrub1(scrubber, list(masked)), strict=True):
        assert out is not None and value not in out, (text, out)


def test_departments_and_devices_named_like_places_are_not_places(scrubber: TextScrubber) -> None:
    kept = ["Pt transported from Cath Lab to CCU intub", "transferred from Cath lab at 3",
            "Additional set to be drawn by resident from Quinton cath."]  # fmt: skip
    assert scrub1(scrubber, kept) == kept
    masked = {"pt lives in Quinton": "Quinton", "transferred from General Hospital": "General Hospital"}
    for (text, value), out in zip(masked.items(), scrub1(scrubber, list(masked)), strict=True):
        assert out is not None and value not in out, (text, out)


def test_codes_are_judged_without_loading_the_word_lists() -> None:
    """The sync process judges source values of codes itself; the word lists (~0.3 s to read) must stay
    unread for them, or every backfill pays that (it did, once span edges were tidied for every span)."""
    import subprocess
    import sys

    code = (
        "from cohortsync.deid import lexicon\n"
        "from cohortsync.deid.text import LocalRules, TextSettings\n"
        "rules = LocalRules(TextSettings(), b'k' * 32, [])\n"
        "outs = [rules.scrub(v, [3]) for v in ('72892002', '4112343 2.16.840', 'E11.9', '1234567890123')]\n"
        "assert all(o is not None for o in outs), outs\n"
        "assert outs[0][0] == ['[ID]'], outs\n"
        "print(sorted(n for n in lexicon._LAZY if n in vars(lexicon)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_name_span_holds_the_name_only(scrubber: TextScrubber) -> None:
    """A relation glued to a name, a two-word relation's first word and a possessive stay as written."""
    [out] = scrub1(scrubber, ["SOCIAL:DAUGHTER-KRISSY---301 944-5032 & GRAND DAUGHTER-LUCI---301 343-2822."])
    assert out is not None and "KRISSY" not in out and "LUCI" not in out, out
    assert out.startswith("SOCIAL:DAUGHTER-") and "& GRAND DAUGHTER-" in out, out
    [out] = scrub1(scrubber, ["PT'S WIFE HELEN AND STEP DAUGHTER MAUREEN IN TO VISIT"])
    assert out is not None and "STEP DAUGHTER" in out and "HELEN" not in out and "MAUREEN" not in out, out
    [out] = scrub1(scrubber, ["rectal tube placed per dr. white's order."])
    assert out is not None and "white" not in out and re.search(r"per dr\. \S+'s order\.$", out), out
    spans = R.tidy_spans("DAUGHTER-KRISSY and wife: mary", [(0, 15, R.PERSON), (20, 30, R.PERSON)])
    assert spans == [(9, 15, R.PERSON), (26, 30, R.PERSON)]
    assert R.tidy_spans("seen at 123 now", [(8, 11, "LOCATION")]) == [(8, 11, "LOCATION")]  # no word: kept, fail closed


@pytest.mark.parametrize(
    "frame",
    ["spoke w/ {n} re: plan", "SPOKE W/ {n} RE: PLAN", "message left for {n} at home", "called {n} at home",
     "notified {n} of labs", "PAGED {n} RE: BP", "update given to {n} by phone", "family ({n}) at bedside",
     "visited by {n} and sons", "son-in-law {n} here", "SON IN LAW {n} HERE", "STEP SON {n} CALLED",
     "talked w/ {n} at length", "met with {n} today"],
)  # fmt: skip
def test_names_after_the_verbs_and_relations_of_nursing_notes(frame: str) -> None:
    """A name a census list calls a word (Bill), one on no list (Saoirse), any case, where notes put names."""
    for name in ("Bill", "Saoirse"):
        for case in (str, str.upper, str.lower):
            text = frame.replace("{n}", case(name))
            assert any(case(name) in f for f in _found(text, R.PERSON)), (text, _found(text))


def test_counts_and_times_after_a_calling_verb_are_no_names() -> None:
    for text in ("wife called x 2 today", "surgery called late in the shift", "son called o/n and was updated",
                 "Dr Lee updated w/ vs & labs", "george called early this am", "md notified of labs",
                 "called back with results"):  # fmt: skip
        found = _found(text, R.PERSON)
        assert all(w not in f for f in found for w in ("x", "late", "o/n", "w/", "early", "back", "of")), (text, found)


def test_a_sentence_end_after_a_relation_and_a_regarding_label_start_no_name() -> None:
    for text in ("visit from son. Found out that pt was separated", "CONTIN DISCUSSION W FAMILY RE:OVERALL PX",
                 "WIFE WORKS IN DUNDALK", "SON BROUGHT HIM TO UNION HOSP", "AT HOME W HUSBAND, GOES TO DAY CARE",
                 "wife goes home tonight", "SON TAKES PT HOME"):  # fmt: skip
        assert not _found(text, R.PERSON), text
    for text, name in (("visit from dtr. Mary called", "Mary"), ("RE: HUNTER, WILL", "HUNTER, WILL"),
                       ("re: Przybylo", "Przybylo"), ("Re: Will Hunter", "Will Hunter"), ("son, Found", "Found"),
                       ("SISTER HOLLY CALLED", "HOLLY"), ("DAUGHTER, TED AWARE", "TED")):  # fmt: skip
        assert name in _found(text, R.PERSON), text


def test_misspelt_note_words_and_unit_acronyms_are_not_names_or_places() -> None:
    for word in ("toelrated", "duaghter", "visisted", "HOSPIATAL", "NSICU", "Banadryl"):
        assert R._name_kind(word) == "word", word  # one typo from a clinical or template word
    for word in ("Przybylo", "Swackhamer", "milovan", "Tranfaglia"):
        assert R._name_kind(word) == "unknown", word
    for text in ("Foley to BSD draining", "A&O to TPP", "line at tip of SVC", "transferred from TSICU at 6pm"):
        assert not _found(text, "FACILITY") + _found(text, "LOCATION"), text
    for text in ("pt came from CBS today", "transferred to VAH for rehab"):
        assert _found(text, "FACILITY"), text


def test_case_for_ner_keeps_offsets() -> None:
    for line in ("SON BILL CALLED AT 0400", "Mixed Case stays", "12/22 BP 120/80", "O'BRIEN AWARE"):
        cased = R.case_for_ner(line)
        assert len(cased) == len(line)
    assert R.case_for_ner("SON BILL CALLED") == "Son Bill Called"
    assert R.case_for_ner("Mixed CASE") == "Mixed CASE"


def test_all_caps_notes_are_scrubbed_end_to_end(scrubber: TextScrubber) -> None:
    text = "PT IS A 74 YR OLD MALE TX'D FROM CALVERT HOSPITAL 7/22. WIFE MARY SOUZA AWARE. PAGER 54321.\nBP 120/80, 5/5"
    [out] = scrub1(scrubber, [text], shift=17)
    assert out is not None
    for value in ("CALVERT", "7/22", "SOUZA", "54321"):
        assert value not in out, out
    assert "BP 120/80, 5/5" in out


def test_eponyms_labels_and_leading_zeros() -> None:
    # A surname before a medical noun is an eponym; "RE: LAST, FIRST" keeps both words even when one is a word.
    assert not _found("follow-up CT in 12 months per Fleischner criteria.", R.PERSON)
    assert "HUNTER, WILL" in _found("RE: HUNTER, WILL   MRN: 00748941", R.PERSON)
    assert "Skip Johnson" in _found("Skip Johnson | DOB January 11, 1959", R.PERSON)
    # A leading zero makes a date even where a fraction would be exempt; "of" alone names no town.
    assert "02/03" in _found("compared with prior study of 03-Feb-2017 and 02/03.", R.DATE)
    assert not _found("referred for evaluation of Major depressive disorder", "LOCATION")


def test_names_by_reporting_verb_and_between_name_and_credential() -> None:
    assert "LUCY" in _found("CASE MANAGEMENT ON MONDAY (LUCY IS ON VACATION) AND", R.PERSON)
    assert "Foley" in _found("same settings.\nBernard Foley CRT\n", R.PERSON)
    assert not _found("Foley catheter draining well, RN aware", R.PERSON)


def test_a_role_word_ends_a_name_after_a_phrase_only_where_the_name_would_start() -> None:
    text = "SPOKE WITH HOUSE STAFF; SPOKE WITH DORIS DAY RE: PLAN"
    first, second = (m.end() for m in re.finditer(r"SPOKE WITH ", text))
    assert R._name_prefix_end(text, first, first + len("HOUSE STAFF")) == first
    assert text[second : R._name_prefix_end(text, second, second + len("DORIS DAY"))] == "DORIS DAY"
