"""What cohortsync's recognizers are made of, without Presidio.

The recognizers in :mod:`cohortsync.deid.recognizers` are plain regexes and word lists. Built on these
stand-ins for Presidio's ``LocalRecognizer`` and ``RecognizerResult`` (same names, fields and calls),
they run in the sync process itself, where importing Presidio and spaCy would cost more CPU than the
whole extraction of a cohort whose text columns hold only codes. The text workers wrap each one in a
real Presidio recognizer (:func:`cohortsync.deid.text._presidio_adapter`).
"""

from __future__ import annotations

from typing import Any


class RecognizerResult:
    """One span found by a recognizer (Presidio's fields, so the worker converts it one to one)."""

    RECOGNIZER_NAME_KEY = "recognizer_name"
    RECOGNIZER_IDENTIFIER_KEY = "recognizer_identifier"
    __slots__ = ("end", "entity_type", "recognition_metadata", "score", "start")

    def __init__(
        self, entity_type: str, start: int, end: int, score: float, recognition_metadata: dict[str, Any] | None = None
    ) -> None:
        self.entity_type = entity_type
        self.start = start
        self.end = end
        self.score = score
        self.recognition_metadata = recognition_metadata or {}

    def __repr__(self) -> str:
        return f"RecognizerResult({self.entity_type}, {self.start}, {self.end}, {self.score})"


class LocalRecognizer:
    """A recognizer that runs in the calling process (Presidio's constructor and attributes)."""

    def __init__(
        self, supported_entities: list[str], name: str | None = None, supported_language: str = "en", **_: Any
    ) -> None:
        self.supported_entities = list(supported_entities)
        self.name = name or type(self).__name__
        self.supported_language = supported_language
        self.id = f"{self.name}_{id(self)}"
        self.load()
        self.is_loaded = True

    def load(self) -> None:
        """Nothing to load by default."""

    def analyze(self, text: str, entities: list[str] | None, nlp_artifacts: Any = None) -> list[RecognizerResult]:
        """The spans this recognizer finds in ``text``."""
        raise NotImplementedError
