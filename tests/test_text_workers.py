"""The default sync's free-text cost, kept safe: the NER gate, the keyed verdict cache, workers that
start only when a window holds text, and workers that never outlive their parent (real Presidio,
real spaCy model, real processes killed with SIGKILL)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync.deid import recognizers as R
from cohortsync.deid.text import (
    CARD_PATTERN,
    DEMOGRAPHIC_VALUES,
    FIRST_NAMES,
    LAST_NAMES,
    SCRUB_FAILED,
    TextScrubber,
    TextScrubError,
    TextSettings,
    Verdict,
    closed_form,
    could_be_card,
    could_hide_name,
)
from cohortsync.errors import CohortsyncError, ConfigError
from conftest import CONFIG, TEST_KEY, Project, person_ids

KEY = b"test-key-0123456789abcdef"


def gate(text: str) -> bool:
    return could_hide_name(text, R.VOCABULARY)


# --- the gate: a value is kept from NER only if it cannot hide a name ------------------------------------

#: Names as notes write them, none of them a safe-list word (checked below, so the test cannot go stale).
NAMES = sorted(
    {n for n in [*FIRST_NAMES, *LAST_NAMES, "Souza", "Milovan", "Kernan", "Catonsville", "Nuñez", "José", "Nguyen"]
     if n.casefold() not in R.VOCABULARY}
)
CODE_CHARS = "0123456789-./#:_+()"
SAFE_TOKENS = ["8331-1", "00025152531", "E11.9", "K92.2", "J1100", "5", "mg", "PO", "BID", "3rd", "10am", "#4", "M", "F"]


def test_the_name_list_is_not_safe_listed() -> None:
    assert len(NAMES) > 150


@pytest.mark.parametrize(
    "text",
    [
        "8331-1 Smith", "SMITH8331", "smith_8331", "8331-1/jones", "J.Smith", "12345john", "MRN:12345/JONES",
        "Garcia-Lopez 5mg", "seen by nuñez", "husband milovan", "o'brien", "pt. ZELLER 3x daily", "E11.9 Souza",
        "Wu", "LI 8331", "RX123 Catonsville", "transferred from kernan",
    ],
)
def test_names_hidden_in_codes_and_mixed_values_reach_ner(text: str) -> None:
    assert gate(text)


@pytest.mark.parametrize("text", ["", "   ", *SAFE_TOKENS, "5 mg PO BID", "8331-1 E11.9 #4", "3rd 10am"])
def test_codes_numbers_and_units_skip_ner(text: str) -> None:
    assert not gate(text)


@given(
    name=st.sampled_from(NAMES),
    case=st.sampled_from([str.upper, str.lower, str.title, lambda s: s]),
    left=st.text(alphabet=CODE_CHARS, max_size=8),
    right=st.text(alphabet=CODE_CHARS, max_size=8),
    glue=st.sampled_from(["", " "]),
    before=st.lists(st.sampled_from(SAFE_TOKENS), max_size=4),
    after=st.lists(st.sampled_from(SAFE_TOKENS), max_size=4),
)
def test_a_name_anywhere_in_a_code_or_mixed_value_reaches_ner(
    name: str, case: Callable[[str], str], left: str, right: str, glue: str, before: list[str], after: list[str]
) -> None:
    value = " ".join([*before, left + glue + case(name) + glue + right, *after])
    assert gate(value), value


def test_each_row_of_a_repeated_value_lands_as_a_worker_writes_it(workers_only: TextScrubber) -> None:
    """One call, each value on rows with different offsets (and none): a value with a date moves per
    row, one without is replaced once for all its rows, and every row equals the worker's output."""
    values = [v for v in RULE_VALUES if not gate(v) and not could_be_card(v)]
    shifts = [7, None, -30, 7, 200]
    texts = [v for v in values for _ in shifts]
    offsets = pa.array(shifts * len(values), pa.int32())
    with TextScrubber(TextSettings(workers=1), KEY, lazy=True) as local:
        mine, stats = local.scrub(pa.array(texts, pa.string()), offsets)
        assert stats.sent == 0 and not local.started
    theirs, _ = workers_only.scrub(pa.array(texts, pa.string()), offsets)
    assert mine.to_pylist() == theirs.to_pylist()
    moved = {t: set(mine.to_pylist()[i * len(shifts) : (i + 1) * len(shifts)]) for i, t in enumerate(values)}
    assert len(moved["E11.9 03/04/2021"]) == 4 and len(moved["MRN 1234567"]) == 1  # 7 twice: four outputs


def test_row_offsets_are_read_only_when_used() -> None:
    from cohortsync.deid.text import _Offsets

    offsets: list[int | None] = [5, -3]
    view = _Offsets([0 * 3 + 1, 4 * 3 + 0, 4 * 3 + 2], offsets)  # keys: value * (offsets + 1) + offset index
    assert len(view) == 3 and list(view) == [-3, 5, None] and view[1:] == (5, None) and tuple(view) == (-3, 5, None)


@given(
    parts=st.lists(
        st.one_of(
            st.text(alphabet=CODE_CHARS, min_size=1, max_size=10),
            st.sampled_from(sorted(w for w in R.VOCABULARY if not any(c.isspace() for c in w))),
            st.sampled_from(SAFE_TOKENS),
            st.builds(lambda a, n: a + n, st.sampled_from(["E", "J", "RX", "HL", "V"]), st.integers(0, 99999).map(str)),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_values_of_codes_units_and_safe_words_skip_ner(parts: list[str]) -> None:
    assert not gate(" ".join(parts))


# --- the scrubber: regexes on every value, NER on admitted ones, clean verdicts cached by keyed hash -----


@pytest.fixture(scope="module")
def lazy() -> Iterator[TextScrubber]:
    with TextScrubber(TextSettings(workers=1), KEY, lazy=True) as scr:
        yield scr


def scrub(scr: TextScrubber, texts: list[str | None], shift: int | None = 10) -> tuple[list[str | None], Any]:
    out, stats = scr.scrub(pa.array(texts, pa.string()), pa.array([shift] * len(texts), pa.int32()))
    return list(out.to_pylist()), stats


def test_no_workers_start_for_a_window_without_text(lazy: TextScrubber) -> None:
    fresh = TextScrubber(TextSettings(workers=1), KEY, lazy=True)
    out, stats = scrub(fresh, [None, "", "   ", None])
    assert out == [None, "", "   ", None] and stats.analysed == 0
    assert not fresh.started
    fresh.close()
    with pytest.raises(TextScrubError):
        scrub(fresh, ["8331-1"])


def test_one_worker_for_short_values_all_of_them_for_a_large_call() -> None:
    with TextScrubber(TextSettings(workers=2, batch_size=4), KEY, lazy=True) as scr:
        scrub(scr, ["8331-1", "E11.9"])
        assert scr.workers_running == 0  # codes: the rules ran in this process
        scrub(scr, ["bilirubin 8331-1", "E11.9 bilirubin"])  # a word on no safe list: NER must see it
        assert scr.workers_running == 1
        many = [f"bilirubin {i}-{i % 7}" for i in range(9)]  # more than two batches' worth
        out, stats = scrub(scr, many)
        assert out == many and stats.analysed == 9 and stats.sent == 9
        assert scr.workers_running == 2
    assert scr.workers_running == 0


def test_names_in_mixed_values_are_found_and_regexes_see_code_values(lazy: TextScrubber) -> None:
    texts = [
        "8331-1 per Dr. Hannah Kowalski",
        "Hgb 13.2 g/dl, Rebecca Thornton notified",
        "K92.2 555-201-3344",  # codes only: no NER, but the phone rule still applies
        "E11.9 03/04/2021",
    ]
    out, stats = scrub(lazy, texts)
    assert out[0] is not None and "Kowalski" not in out[0] and "Hannah" not in out[0]
    assert out[1] is not None and "Thornton" not in out[1] and "Rebecca" not in out[1]
    assert out[2] == "K92.2 [PHONE]"
    assert out[3] == "E11.9 03/14/2021"
    assert stats.analysed == 4


def no_recognizers() -> list[Any]:
    """A deployment's extra recognizers, none: with any, every value goes to the workers."""
    return []


@pytest.fixture(scope="module")
def workers_only() -> Iterator[TextScrubber]:
    with TextScrubber(TextSettings(workers=1, extra_recognizers=("test_text_workers:no_recognizers",)), KEY) as scr:
        yield scr


#: Values no NER sees, with something for every rule: ids, dates, phones, ages, addresses, e-mails, cards.
RULE_VALUES = [
    "K92.2", "8331-1", "2 tab 10 mg", "E11.9 03/04/2021", "K92.2 555-201-3344", "seen 3/4", "dr j", "Dr. J 8331",
    "MRN 1234567", "426701000119108", "01/02/2020", "ssn 123-45-6789", "1 tab po bid x 7 days", "12 Oak Street",
    "02139", "age 93", "93 yo", "test@example.com", "http://x.org/a", "10.0.0.1", "pager 54321", "ext 4432", "5/5",
    "4/10", "120/80", "4111 1111 1111 1111", "4111111111111112", "3/16/21 2:30pm", "Jan 3rd", "2nd of May 2019",
]  # fmt: skip


def test_rules_run_in_the_sync_process_with_the_workers_output(workers_only: TextScrubber) -> None:
    """Values that could not hide a name are analysed without a worker, and land exactly as a worker
    would write them (per row offset for dates, tags, surrogates); a card number still goes to a worker."""
    values = [v for v in RULE_VALUES if not gate(v)]
    assert len(values) >= 20
    shifts = [7, None, -30]
    with TextScrubber(TextSettings(workers=1), KEY, lazy=True) as local:
        for shift in shifts:
            mine, stats = scrub(local, list(values), shift)
            theirs, _ = scrub(workers_only, list(values), shift)
            assert mine == theirs
            if shift == shifts[0]:
                assert stats.analysed == len(values) and stats.sent == 1  # the valid card: Presidio's recognizer
        assert local.workers_running == 1
    assert "[ID]" in mine and "[PHONE]" in str(mine) and "[SSN]" in str(mine) and "dr j" not in mine


@pytest.mark.parametrize("value", ["Jan 3rd Jan 3rd", "3rd Jan 3rd", "Jan 3rd 3rd Jan"])
def test_overlapping_date_spans_resolve_alike_in_process_and_in_a_worker(workers_only: TextScrubber, value: str) -> None:
    """Two date rules can match overlapping spans ("Jan 3rd" and "3rd Jan"); which one wins must not depend
    on the order the spans came in (found by the property below, which could fail at random before)."""
    local = TextScrubber(TextSettings(workers=1), KEY, lazy=True)
    try:
        for shift in (3, None):
            assert scrub(local, [value], shift)[0] == scrub(workers_only, [value], shift)[0], (value, shift)
    finally:
        local.close()


@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from(RULE_VALUES),
            st.sampled_from(SAFE_TOKENS),
            st.text(alphabet=CODE_CHARS + " ", min_size=1, max_size=14),
            st.sampled_from(sorted(w for w in R.VOCABULARY if w.isalpha())),
            st.builds(lambda c, p: c + p, st.sampled_from("ABJKLMNQXYZabjm"), st.sampled_from(["", ".", ". ", "-"])),
        ),
        min_size=1,
        max_size=5,
    ),
    shift=st.sampled_from([3, -90, None]),
)
def test_any_value_of_codes_and_safe_words_lands_as_a_worker_would_write_it(
    workers_only: TextScrubber, parts: list[str], shift: int | None
) -> None:
    value = " ".join(parts)
    local = TextScrubber(TextSettings(workers=1), KEY, lazy=True)
    try:
        mine, stats = scrub(local, [value], shift)
        theirs, _ = scrub(workers_only, [value], shift)
        assert mine == theirs, value
        assert stats.sent == (1 if gate(value) or could_be_card(value) else 0) or not value.strip()
    finally:
        local.close()


def test_the_rule_pass_imports_neither_presidio_nor_spacy() -> None:
    """What lets a sync of code columns skip the 3-4 CPU s of a worker start: the recognizers, their
    vocabulary and the in-process rule pass load without Presidio or spaCy."""
    code = (
        "import sys, pyarrow as pa\n"
        "from cohortsync.deid.text import TextScrubber, TextSettings\n"
        "s = TextScrubber(TextSettings(workers=1), b'k' * 16, lazy=True)\n"
        "out, st = s.scrub(pa.array(['K92.2 555-201-3344', '8331-1', 'dr j']), pa.array([3, 3, 3], pa.int32()))\n"
        "assert out.to_pylist()[0] == 'K92.2 [PHONE]' and not s.started, out\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('presidio', 'spacy', 'thinc'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_gazetteer_place_is_made_of_one_letter_words() -> None:
    """The in-process rule pass skips the word-list recognizer on a text without a two-letter word
    (loading the lists costs more than a cohort's codes): a name or place from the lists needs such a
    word, as a cue or as the name itself, and no place in the gazetteer is made of single letters."""
    from cohortsync.deid import lexicon

    assert not [p for p in lexicon.PLACES_CASED if not re.search(r"[^\W\d_]{2,}", p)]


@given(digits=st.text(alphabet="0123456789", min_size=13, max_size=19), sep=st.sampled_from(["", " ", "-"]))
def test_the_card_check_is_presidios(digits: str, sep: str) -> None:
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    rec = CreditCardRecognizer()
    assert CARD_PATTERN.pattern == rec.patterns[0].regex
    text = f"card {sep.join([digits[:4], digits[4:8], digits[8:]])} on file"
    found = [r for r in rec.analyze(text, ["CREDIT_CARD"]) if r.score >= 0.5]
    assert could_be_card(text) == bool(found)


@pytest.mark.parametrize("column", ["person.race_source_value", "person.ethnicity_source_value"])
def test_a_category_word_that_is_also_a_surname_passes_only_as_the_whole_value(column: str) -> None:
    """``White``, ``Black``, ``Irish``, ``French`` are surnames too. In a race or ethnicity column the
    whole value equal to a category is that category; a name beside such a word is still found."""
    with TextScrubber(TextSettings(workers=1), KEY, lazy=True) as scr:
        cats = ["White", "black", "IRISH", "french_canadian", "Black or African American", "not hispanic or latino"]
        out, stats = scr.scrub(pa.array(cats), pa.array([5] * len(cats), pa.int32()), column)
        assert out.to_pylist() == cats and stats.analysed == 0 and not scr.started
        hidden = ["White, Hannah Kowalski", "black kowalski", "Irish - Rebecca Thornton", "white 555-201-3344"]
        out, _ = scr.scrub(pa.array(hidden), pa.array([5] * len(hidden), pa.int32()), column)
        got = out.to_pylist()
        assert all("kowalski" not in v.casefold() and "Thornton" not in v and "555" not in v for v in got), got
        # the same words elsewhere are analysed like any text, never answered from the category verdict
        out, stats = scr.scrub(pa.array(["White"]), pa.array([5], pa.int32()), "note.note_text")
        assert stats.analysed == 1
        out, stats = scr.scrub(pa.array(["White"]), pa.array([5], pa.int32()))
        assert stats.analysed == 0  # the cache answers (its verdict came from analysis, not the vocabulary)


def test_values_are_analysed_once_unless_their_output_depends_on_the_row(lazy: TextScrubber) -> None:
    values = ["2160-0", "asian", "2 tab 10 mg", "Call 555-201-3399 re Dr. Hannah Kowalski"]  # seen by no other test
    first, s1 = scrub(lazy, values * 3)
    again, s2 = scrub(lazy, values)
    assert first == again * 3 and first[:3] == values[:3]
    assert first[3] is not None and "555" not in first[3] and "Kowalski" not in first[3]
    assert s1.analysed == 4 and s2.analysed == 0  # the second call needed no worker
    assert s1.entities == {k: 3 * n for k, n in s2.entities.items()} and s2.entities["PHONE"] == 1
    dated = ["seen 03/04/2021", "Hannah Kowalski seen 03/04/2021"]
    for _ in range(2):  # a date moves with each row's offset: analysed every time, shifted per row
        out, stats = lazy.scrub(pa.array(dated * 2), pa.array([1, 1, 30, 30], pa.int32()))
        assert stats.analysed == 2
        assert out.to_pylist()[0] == "seen 03/05/2021" and out.to_pylist()[2] == "seen 04/03/2021"
        assert "Kowalski" not in str(out.to_pylist())


def test_the_cache_holds_no_value(lazy: TextScrubber) -> None:
    scrub(lazy, ["8331-1", "ZELLER", "Call 555-201-3344 re Dr. Hannah Kowalski"])
    cached = dict(lazy._verdicts)
    assert cached and all(isinstance(k, bytes) and len(k) == 16 for k in cached)
    label = hmac.new(KEY, b"cohortsync text verdict cache v1", hashlib.sha256).digest()
    assert cached[hmac.new(label, b"8331-1", hashlib.sha256).digest()[:16]] == Verdict(None, ())
    assert hashlib.sha256(b"8331-1").digest()[:16] not in cached  # an unkeyed hash could be looked up
    dump = repr(cached).encode() + b"".join(cached)
    for raw in (b"ZELLER", b"555", b"201-3344", b"Kowalski", b"Hannah"):  # clean values are kept as None
        assert raw not in dump
    other = TextScrubber(TextSettings(workers=1), b"another-key", lazy=True)
    assert other._digest("8331-1") != lazy._digest("8331-1")


def test_the_cache_is_bounded() -> None:
    scr = TextScrubber(TextSettings(workers=1, verdict_cache=3), KEY, lazy=True)
    digests = [scr._digest(str(i)) for i in range(10)]
    clean = Verdict(None, ())
    scr._remember((d, clean) for d in digests[:5])
    assert scr._verdict(digests[2]) == clean  # touched: now the most recent
    scr._remember((d, clean) for d in digests[5:7])
    assert len(scr._verdicts) == 3
    assert [scr._verdict(d) is not None for d in (digests[2], digests[5], digests[6], digests[4], digests[0])] == [
        True, True, True, False, False,
    ]
    assert not scr.started


def test_a_failed_analysis_is_never_cached() -> None:
    from test_deid_text import RAISE_MARKER

    s = TextSettings(workers=1, extra_recognizers=("test_deid_text:broken_recognizers",))
    with TextScrubber(s, KEY, lazy=True) as scr:
        for _ in range(2):
            out, stats = scrub(scr, [f"8331-1 {RAISE_MARKER}"])
            assert out == [SCRUB_FAILED] and stats.failures == 1 and stats.analysed == 1


def test_a_missing_model_is_refused_before_any_row_even_when_lazy() -> None:
    with pytest.raises(ConfigError, match="not_a_model_xyz"):
        TextScrubber(TextSettings(model="not_a_model_xyz", workers=1), KEY, lazy=True)


def test_a_failed_lazy_start_fails_every_call_the_same_way(tmp_path: Path) -> None:
    scr = TextScrubber(TextSettings(model=str(tmp_path), workers=1), KEY, lazy=True)  # a directory, not a model
    errors = []
    for _ in range(2):
        with pytest.raises(CohortsyncError) as e:
            scrub(scr, ["8331-1 Hannah Kowalski"])
        errors.append(e.value)
    assert errors[0] is errors[1]  # started once, failed once
    assert not scr.started
    scr.close()


# --- in a sync -------------------------------------------------------------------------------------------


def default_policy_project(project: Project, members: int | None) -> None:
    project.config.write_text(CONFIG.replace('policy = "keep_everything.toml"\n', ""), encoding="utf-8")
    ids = person_ids(project)
    ids = ids[:members] if members else ids
    r = project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", ids)))
    assert r.exit_code == 0, r.output


def count_spawns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Workers started by every scrubber of this process, one entry per start."""
    spawned: list[int] = []
    real = TextScrubber._spawn

    def counting(self: TextScrubber, workers: int, initargs: tuple[Any, ...]) -> Any:
        spawned.append(workers)
        return real(self, workers, initargs)

    monkeypatch.setattr(TextScrubber, "_spawn", counting)
    return spawned


def put_names_in_source_values(project: Project, every: int) -> None:
    """Every ``every``-th condition's source value becomes a clinician's name with a distinct number."""
    con = project.con()
    try:
        con.execute(
            "UPDATE omop.omop.condition_occurrence SET condition_source_value = "
            f"'seen by Hannah Kowalski ' || condition_occurrence_id WHERE condition_occurrence_id % {every} = 0"
        )
    finally:
        con.close()


def test_a_backfill_of_codes_only_text_columns_starts_no_text_worker(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eunomia's source values are codes and demographic categories: rules run in the sync process,
    categories match the closed vocabulary, and no Presidio worker is needed."""
    spawned = count_spawns(monkeypatch)
    default_policy_project(project, 40)
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert spawned == []
    con = duckdb.connect()
    race = con.execute(
        f"SELECT DISTINCT race_source_value, ethnicity_source_value FROM read_parquet('{project.landing}/c/person/*.parquet')"
    ).fetchall()
    assert race and all(r in DEMOGRAPHIC_VALUES and closed_form(e) in DEMOGRAPHIC_VALUES for r, e in race)
    codes = con.execute(
        f"SELECT count(*) FROM read_parquet('{project.landing}/c/condition_occurrence/*.parquet')"
    ).fetchall()[0][0]
    assert codes > 0


def test_a_sync_with_nothing_due_starts_no_text_worker(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned = count_spawns(monkeypatch)
    put_names_in_source_values(project, 5)
    default_policy_project(project, 12)
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    started = len(spawned)
    assert started >= 1
    landed = sorted((project.landing / "c").glob("condition_occurrence/*.parquet"))
    assert landed
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    assert len(spawned) == started  # the no-op sync never started them


def test_cached_verdicts_in_a_sync_still_scrub_every_row(project: Project) -> None:
    """Across many batches the verdict cache answers repeated values: a phone is still replaced on
    every row, and a date in a source value is still shifted per person (never cached)."""
    con = project.con()
    try:
        con.execute(
            "UPDATE omop.omop.condition_occurrence SET condition_source_value = CASE "
            "WHEN condition_occurrence_id % 3 = 0 THEN 'call 555-201-3344' "
            "WHEN condition_occurrence_id % 3 = 1 THEN 'seen 03/04/2021' ELSE condition_source_value END"
        )
    finally:
        con.close()
    default_policy_project(project, 300)
    with project.config.open("a", encoding="utf-8") as f:
        f.write('\n[sync]\nbatch_rows = 1024\ntables = ["person", "condition_occurrence"]\n')
    r = project.cli("sync", "-q")
    assert r.exit_code == 0, r.output
    landed = duckdb.connect().execute(
        f"SELECT person_id, condition_source_value FROM read_parquet('{project.landing}/c/condition_occurrence/*.parquet')"
    ).fetchall()
    assert len(landed) > 3 * 1024  # several batches
    values = [v for _, v in landed]
    assert not any("555" in str(v) or v == "seen 03/04/2021" for v in values)
    phones = sum(v == "call [PHONE]" for v in values)
    dated = {(p, v) for p, v in landed if str(v).startswith("seen ")}
    assert phones > 1024 and len(dated) > 10
    by_person: dict[object, set[object]] = {}
    for p, v in dated:
        by_person.setdefault(p, set()).add(v)
    assert all(len(vs) == 1 for vs in by_person.values())  # one offset per person
    assert len({v for _, v in dated}) > 5  # and different offsets for different persons


# --- no orphans ------------------------------------------------------------------------------------------


def _marked(marker: str) -> dict[int, dict[str, str]]:
    """Live (not zombie) processes whose environment holds ``marker``: pid -> a few /proc fields."""
    out: dict[int, dict[str, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker.encode() not in (d / "environ").read_bytes():
                continue
            status = dict(
                line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line
            )
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if status.get("State", "").strip().startswith("Z"):
            continue  # a zombie holds no memory and runs nothing; its reaper is not ours
        out[int(d.name)] = {"threads": status.get("Threads", "0").strip(), "cmdline": cmdline}
    return out


def _wait_for(check: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_sync_leaves_no_text_worker(project: Project) -> None:
    put_names_in_source_values(project, 1)  # distinct names on every row: NER keeps the workers busy
    default_policy_project(project, None)
    marker = f"ORPHAN_TEST_MARK={uuid.uuid4().hex}"  # not COHORTSYNC_*: settings refuse unknown ones
    name, value = marker.split("=")
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, name: value}
    env.pop("COHORTSYNC_FAULT_POINT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cohortsync.cli", "--config", str(project.config), "sync", "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def workers_running() -> bool:
            assert proc.poll() is None, "the sync ended before its text workers were seen"
            ws = [p for pid, p in _marked(marker).items() if pid != proc.pid and "resource_tracker" not in p["cmdline"]]
            # Two or more threads: the worker's initializer has run (its parent watch is a thread).
            return len(ws) >= 1 and all(int(p["threads"]) >= 2 for p in ws)

        assert _wait_for(workers_running, 180), "the text workers never started"
        seen = set(_marked(marker)) - {proc.pid}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_for(lambda: not _marked(marker), 60), f"left behind: {_marked(marker)}"
        assert seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _marked(marker):  # only processes this test started carry the marker
            os.kill(pid, signal.SIGKILL)


def test_forkserver_workers_start_and_scrub() -> None:
    """Under forkserver the worker's parent is the fork server: the parent watch must not mistake it."""
    with TextScrubber(TextSettings(workers=1, start_method="forkserver"), KEY) as scr:
        out, stats = scrub(scr, ["Call 555-201-3344", "8331-1"])
        assert out == ["Call [PHONE]", "8331-1"] and stats.failures == 0
