"""Free-text de-identification: naive Presidio loop vs cohortsync's TextScrubber, on the same notes.

    python benchmarks/deid_notes.py [--notes 240] [--workers 2] [--spacy]
    python benchmarks/deid_notes.py --physionet [DIR]      # held-out real notes: dev and test halves

``--physionet`` scores the PhysioNet deid gold standard (real ICU nursing notes written outside this
project; ``../shared/deid-corpora/physionet-deid`` by default) by the corpus README's rule, dev and test
halves apart, per label (leaked / total) with character precision, beside the naive loop. Rules and
lists are written from dev and the project's own sets only; test is run and reported, never read.

The naive loop is what a first integration looks like: one default-configured ``AnalyzerEngine`` (all
predefined recognizers, the same spaCy model, full pipeline) and ``AnonymizerEngine``, ``analyze`` +
``anonymize`` per note in one process. cohortsync's path is ``TextScrubber.scrub`` on an Arrow column.
Engine start-up is excluded from both rates and printed separately. ``--spacy`` adds spaCy-only
words/s (full pipeline vs NER only, per call vs ``nlp.pipe``); run it with ``OPENBLAS_NUM_THREADS=1``
as well to see the threading effect.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cohortsync.deid.recognizers  # noqa: F401  (pins tldextract offline before presidio loads)
from cohortsync.deid.evalset import EvalSet, Note, Report, Span, evaluate, make_evalset
from cohortsync.deid.recognizers import DenyTerm
from cohortsync.deid.text import TextScrubber, TextSettings

MODEL = TextSettings.model


def _children_cpu() -> float:
    """CPU seconds used so far by this process's live children (the scrubber's workers), from /proc."""
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Timing:
    """Best wall-clock seconds over the runs, and CPU seconds (all processes) of that run."""

    def __init__(self) -> None:
        self.wall = float("inf")
        self.cpu = 0.0

    def add(self, wall: float, cpu: float) -> None:
        if wall < self.wall:
            self.wall, self.cpu = wall, cpu


def naive(texts: Sequence[str], runs: int) -> tuple[float, Timing, list[list[tuple[int, int, str]]]]:
    """(load seconds, timing, detections) of the per-note analyze + anonymize loop."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    t0 = time.perf_counter()
    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": MODEL}]}
    analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
    analyzer.analyze("warm up Dr. Smith 2021-01-01", language="en")
    load = time.perf_counter() - t0
    timing = Timing()
    found: list[list[tuple[int, int, str]]] = []
    for _ in range(runs):
        found = []
        t1, c1 = time.perf_counter(), time.process_time()
        for text in texts:
            results = analyzer.analyze(text=text, language="en")
            anonymizer.anonymize(text=text, analyzer_results=results)  # type: ignore[arg-type]
            found.append([(r.start, r.end, r.entity_type) for r in results])
        timing.add(time.perf_counter() - t1, time.process_time() - c1)
    return load, timing, found


def ours(
    texts: Sequence[str], workers: int, deny: Sequence[Any], runs: int, by_line: bool = True
) -> tuple[float, Timing, TextScrubber]:
    import pyarrow as pa

    t0 = time.perf_counter()
    settings = TextSettings(workers=workers, ner_by_line=by_line)
    scrubber = TextScrubber(settings, key=b"benchmark-key", deny_list=deny)
    load = time.perf_counter() - t0
    arr = pa.array(list(texts), pa.string())
    shifts = pa.array([(i % 700) - 350 or 1 for i in range(len(texts))], pa.int32())
    timing = Timing()
    for _ in range(runs):
        # Each run is a fresh call on values the workers have not cached (the line cache is per value).
        scrubber.scrub(pa.array(["warm-up " + str(time.time())]), pa.array([1], pa.int32()))
        t1, c1, k1 = time.perf_counter(), time.process_time(), _children_cpu()
        _out, stats = scrubber.scrub(arr, shifts)
        timing.add(time.perf_counter() - t1, time.process_time() - c1 + _children_cpu() - k1)
        assert stats.failures == 0
        scrubber.close()
        scrubber = TextScrubber(settings, key=b"benchmark-key", deny_list=deny)
    return load, timing, scrubber


def synth_notes(persons: int, seed: int) -> tuple[list[Note], list[DenyTerm]]:
    """Held-out notes: ``cohortsync.synth``'s own templates and ground truth (written independently of
    the evaluation set), with the deny-list a deployment would build from provider, care_site and location."""
    import tempfile
    from pathlib import Path

    import duckdb

    from cohortsync import synth

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synth.duckdb"
        synth.generate(path, persons, seed=seed, threads=1)
        con = duckdb.connect(str(path), read_only=True)
        rows = con.execute("SELECT note_id, note_text FROM omop.note ORDER BY note_id").fetchall()
        truth: dict[int, list[Span]] = {}
        for nid, kind, s, e in con.execute(
            f"SELECT note_id, kind, start_offset, end_offset FROM {synth.TRUTH_SCHEMA}.note_phi"
        ).fetchall():
            truth.setdefault(nid, []).append(Span(s, e, kind))
        deny = [DenyTerm(r[0], "PERSON") for r in con.execute("SELECT provider_name FROM omop.provider").fetchall()]
        deny += [DenyTerm(r[0], "FACILITY") for r in con.execute("SELECT care_site_name FROM omop.care_site").fetchall()]
        deny += [DenyTerm(r[0], "ADDRESS") for r in con.execute("SELECT address_1 FROM omop.location").fetchall()]
        con.close()
    notes = [Note("synth", text, tuple(truth.get(nid, [])), ()) for nid, text in rows if text]
    return notes, [d for d in deny if d.text]


def spacy_speed(texts: Sequence[str]) -> None:
    """Words/s of the model alone, to separate spaCy's cost from Presidio's."""
    import spacy

    words = sum(len(t.split()) for t in texts)
    full = spacy.load(MODEL)
    print(f"spaCy alone ({len(texts)} notes, {words} words, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}):")
    for label, nlp in (("full pipeline", full), ("NER only", spacy.load(MODEL))):
        if label == "NER only":
            nlp.select_pipes(enable=["ner"])
        t = time.perf_counter()
        for text in texts:
            nlp(text)
        per_call = words / (time.perf_counter() - t)
        t = time.perf_counter()
        list(nlp.pipe(texts, batch_size=64))
        piped = words / (time.perf_counter() - t)
        print(f"  {label:<14} per call {per_call:8.0f} words/s   nlp.pipe {piped:8.0f} words/s")


def line(name: str, n: int, mb: float, t: Timing, rep: Report) -> str:
    return (
        f"{name:<22}{n / t.wall:9.1f} notes/s {mb / t.wall:8.3f} MB/s {1000 * t.cpu / n:7.1f} CPU-ms/note   "
        f"recall {rep.overall.recall:.3f}  precision {rep.overall.precision:.3f}   "
        + "  ".join(f"{c} {s.recall:.3f}" for c, s in sorted(rep.by_category.items()) if c != "OTHER")
    )


# ---------------------------------------------------------------------------------------------------
# PhysioNet deid gold standard: leaked spans per label and character precision (corpus README's rule)
# ---------------------------------------------------------------------------------------------------

PHYSIONET = Path(__file__).resolve().parents[2] / "shared" / "deid-corpora" / "physionet-deid"
_MONTHS = re.compile(r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b", re.IGNORECASE)
#: Detected entity types to the corpus's label families, for per-family character precision.
_FAMILY = {"PERSON": "NAME", "DATE": "DATE", "DATE_TIME": "DATE", "LOCATION": "LOCATION", "FACILITY": "LOCATION",
           "ADDRESS": "LOCATION", "ZIP": "LOCATION", "KNOWN_PHI": "LOCATION", "ORGANIZATION": "LOCATION",
           "NRP": "LOCATION", "AGE": "AGE"}  # fmt: skip


def scored(span: dict[str, Any]) -> bool:
    """The README's rule: spans under 3 characters, years alone, ages (under 90) and relative dates are not scored."""
    v, lab = span["value"], span["label"]
    if len(v.strip()) < 3 or span.get("orig_label") == "DateYear":
        return False
    if lab == "AGE":
        return bool(re.fullmatch(r"\s*(?:9\d|1[0-2]\d)\s*", v))
    return not (lab == "DATE" and not re.search(r"\d", v) and not _MONTHS.search(v))


def physionet_report(
    notes: Sequence[dict[str, Any]], outputs: Sequence[str], found: Sequence[Sequence[tuple[int, int, str]]]
) -> tuple[Counter[str], Counter[str], dict[str, tuple[int, int]]]:
    """(total, leaked) per label, and (PHI chars, scrubbed chars) per detected family plus ``ALL``.

    A span leaks when its exact value still stands in the output as a whole word (case-sensitive).
    """
    total: Counter[str] = Counter()
    leaked: Counter[str] = Counter()
    chars: dict[str, list[int]] = {}
    for note, out, spans in zip(notes, outputs, found, strict=True):
        text = note["text"]
        gold = bytearray(len(text))
        for sp in note["spans"]:
            gold[sp["start"] : sp["end"]] = b"\x01" * (sp["end"] - sp["start"])
            if scored(sp):
                total[sp["label"]] += 1
                rx = r"(?<![A-Za-z0-9])" + re.escape(sp["value"]) + r"(?![A-Za-z0-9])"
                leaked[sp["label"]] += re.search(rx, out) is not None
        for s, e, entity in spans:
            fam = _FAMILY.get(entity, "IDENTIFIER")
            for key in (fam, "ALL"):
                c = chars.setdefault(key, [0, 0])
                for i in range(s, e):
                    if not text[i].isspace():
                        c[0] += gold[i]
                        c[1] += 1
    return total, leaked, {k: (v[0], v[1]) for k, v in chars.items()}


def _naive_outputs(texts: Sequence[str]) -> tuple[list[str], list[list[tuple[int, int, str]]], float]:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": MODEL}]}
    analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
    outs, found = [], []
    t0 = time.perf_counter()
    for text in texts:
        results = analyzer.analyze(text=text, language="en")
        outs.append(anonymizer.anonymize(text=text, analyzer_results=results).text)  # type: ignore[arg-type]
        found.append([(r.start, r.end, r.entity_type) for r in results])
    return outs, found, time.perf_counter() - t0


def _leaked_keys(notes: Sequence[dict[str, Any]], outputs: Sequence[str]) -> set[tuple[int, int]]:
    """(note index, span index) of every scored span that leaks."""
    out: set[tuple[int, int]] = set()
    for i, (note, text) in enumerate(zip(notes, outputs, strict=True)):
        for j, sp in enumerate(note["spans"]):
            rx = r"(?<![A-Za-z0-9])" + re.escape(sp["value"]) + r"(?![A-Za-z0-9])"
            if scored(sp) and re.search(rx, text):
                out.add((i, j))
    return out


def _persisting(notes: Sequence[dict[str, Any]], first: Sequence[str], workers: int) -> Counter[str]:
    """Leaks per label that persist under another key and date offset: true misses, not a shifted date or a
    surrogate name that happens to equal a real one (counts only; no value is printed)."""
    import pyarrow as pa

    with TextScrubber(TextSettings(workers=workers), key=b"another-scoring-key-9876543210fedcba") as s:
        out, _ = s.scrub(pa.array([n["text"] for n in notes], pa.string()), pa.array([101] * len(notes), pa.int32()))
    both = _leaked_keys(notes, first) & _leaked_keys(notes, [o or "" for o in out.to_pylist()])
    return Counter(notes[i]["spans"][j]["label"] for i, j in both)


def physionet(
    directory: Path, workers: int, with_naive: bool, collisions: bool = False, halves: Sequence[str] = ("dev", "test")
) -> None:
    """Print, per half (dev, test) and engine: leaked / total per label and character precision."""
    import pyarrow as pa

    for half in halves:
        path = directory / f"gold.{half}.jsonl"
        notes = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [n["text"] for n in notes]
        rows: list[tuple[str, list[str], list[list[tuple[int, int, str]]], float]] = []
        with TextScrubber(TextSettings(workers=workers), key=b"corpus-scoring-key-0123456789abcdef") as s:
            t0 = time.perf_counter()
            out, _ = s.scrub(pa.array(texts, pa.string()), pa.array([17] * len(texts), pa.int32()))
            dt = time.perf_counter() - t0
            det = [[(d.start, d.end, d.entity) for d in (ds or [])] for ds in s.detect(texts)]
        rows.append((f"cohortsync ({workers} workers)", [o or "" for o in out.to_pylist()], det, dt))
        if with_naive:
            n_out, n_det, n_dt = _naive_outputs(texts)
            rows.append(("naive Presidio loop", n_out, n_det, n_dt))
        print(f"\nPhysioNet deid gold standard, {half} half: {len(notes)} notes ({path.name})")
        for name, outs, found, secs in rows:
            total, leaked, chars = physionet_report(notes, outs, found)
            t, lk = sum(total.values()), sum(leaked.values())
            prec = {k: v[0] / v[1] for k, v in chars.items() if v[1]}
            print(
                f"  {name:<24} leaked {lk}/{t} ({100 * lk / max(t, 1):.1f} %)  "
                + "  ".join(f"{k} {leaked[k]}/{total[k]}" for k in sorted(total))
                + f"   char precision {prec.get('ALL', 0):.3f} ("
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(prec.items()) if k != "ALL")
                + f")   {len(notes) / secs:.0f} notes/s"
            )
            if collisions and name.startswith("cohortsync"):
                kept = _persisting(notes, outs, workers)
                print(
                    f"  {'':<24} of which persist under another key and offset (true misses): {sum(kept.values())}  "
                    + "  ".join(f"{k} {kept[k]}" for k in sorted(total))
                )


def show_dev(directory: Path, workers: int) -> None:
    """Print every leaked span of the **dev** half with its context, and the words scrubbed most often
    that no gold span covers (precision losses): what rules and lists are written from. There is no
    such view of the test half on purpose: test is scored, never read."""
    import pyarrow as pa

    notes = [json.loads(line) for line in (directory / "gold.dev.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [n["text"] for n in notes]
    with TextScrubber(TextSettings(workers=workers), key=b"corpus-scoring-key-0123456789abcdef") as s:
        out, _ = s.scrub(pa.array(texts, pa.string()), pa.array([17] * len(texts), pa.int32()))
        det = s.detect(texts)
    outs = [o or "" for o in out.to_pylist()]
    for i, j in sorted(_leaked_keys(notes, outs)):
        sp = notes[i]["spans"][j]
        ctx = notes[i]["text"][max(0, sp["start"] - 50) : sp["end"] + 50].replace("\n", " | ")
        print(f"LEAK {sp['label']:<5} {sp['orig_label']:<18} {sp['value']!r:<24} {notes[i]['id']}: ...{ctx}...")
    wasted: Counter[tuple[str, str]] = Counter()
    for note, ds in zip(notes, det, strict=True):
        gold = bytearray(len(note["text"]))
        for sp in note["spans"]:
            gold[sp["start"] : sp["end"]] = b"\x01" * (sp["end"] - sp["start"])
        for d in ds or []:
            if not any(gold[d.start : d.end]):
                wasted[(d.entity, note["text"][d.start : d.end])] += 1
    for (entity, value), n in wasted.most_common(120):
        print(f"FALSE {n:>4} {entity:<14} {value!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=240)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--runs", type=int, default=2, help="timed runs per engine; the best is reported")
    ap.add_argument("--spacy", action="store_true", help="also time spaCy alone")
    ap.add_argument("--synth", type=int, default=0, metavar="PERSONS", help="use cohortsync.synth's notes instead")
    ap.add_argument(
        "--physionet",
        nargs="?",
        const=str(PHYSIONET),
        default=None,
        metavar="DIR",
        help="score the PhysioNet deid gold standard's dev and test halves instead",
    )
    ap.add_argument("--no-naive", action="store_true", help="with --physionet: skip the naive Presidio loop")
    ap.add_argument(
        "--collisions",
        action="store_true",
        help="with --physionet: also count the leaks that persist under another key and date offset (true misses)",
    )
    ap.add_argument(
        "--half", choices=("dev", "test"), default=None, help="with --physionet: score one half only (dev while writing rules)"
    )
    ap.add_argument(
        "--show-dev",
        action="store_true",
        help="print the PhysioNet dev half's leaks in context and its most frequent false positives",
    )
    args = ap.parse_args()
    if args.show_dev:
        show_dev(Path(args.physionet or PHYSIONET), args.workers)
        return
    if args.physionet:
        halves = (args.half,) if args.half else ("dev", "test")
        physionet(Path(args.physionet), args.workers, not args.no_naive, args.collisions, halves)
        return
    es = make_evalset(args.notes, args.seed)
    if args.synth:
        notes, deny = synth_notes(args.synth, 7)
        es = EvalSet(tuple(notes), tuple(deny))
        print("held-out notes from cohortsync.synth (its truth labels every age; only ages over 89 are PHI here)")
    texts = [n.text for n in es.notes]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} notes, {mb:.3f} MB, {os.cpu_count()} CPUs, model {MODEL}")
    if args.spacy:
        spacy_speed(texts[:120])

    n_load, n_t, n_found = naive(texts, args.runs)
    n_rep = evaluate(lambda _texts: n_found, es.notes)

    o_load, o_t, scrubber = ours(texts, args.workers, es.known_phi, args.runs)
    with scrubber:
        o_rep = evaluate(scrubber, es.notes)
    _, w_t, whole = ours(texts, args.workers, es.known_phi, args.runs, by_line=False)
    with whole:
        w_rep = evaluate(whole, es.notes)
    with TextScrubber(TextSettings(workers=args.workers), key=b"benchmark-key") as plain:
        p_rep = evaluate(plain, es.notes)

    print(f"engine start-up: naive {n_load:.1f} s, cohortsync {o_load:.1f} s ({args.workers} workers); best of {args.runs}")
    print(line("naive Presidio loop", len(texts), mb, n_t, n_rep))
    print(line(f"cohortsync ({args.workers} workers)", len(texts), mb, o_t, o_rep))
    print(line("  NER on whole notes", len(texts), mb, w_t, w_rep))
    print(f"  without the known-PHI list: recall {p_rep.overall.recall:.3f} precision {p_rep.overall.precision:.3f}")
    print(f"speed ratio (wall clock): {n_t.wall / o_t.wall:.1f}x   (NER on whole notes: {n_t.wall / w_t.wall:.1f}x)")
    print(f"CPU per note ratio: {n_t.cpu / o_t.cpu:.1f}x   (NER on whole notes: {n_t.cpu / w_t.cpu:.1f}x)")
    print("\nnaive:\n" + n_rep.format())
    print("\ncohortsync:\n" + o_rep.format())


if __name__ == "__main__":
    main()
