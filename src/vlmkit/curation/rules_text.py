"""Unimodal text rules: length, repetition, language, regex patterns (URL, profanity, boilerplate).

Each reads only the row's ``text`` (the caption): cheap, so put them first in a config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vlmkit.curation.rules import Bounded, RuleBase, check_range, register
from vlmkit.errors import ConfigError

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore runs)."""
    return _WORD.findall(text.lower())


@dataclass(kw_only=True, frozen=True)
class TextLengthConfig:
    min_words: int = 1
    max_words: int = 128
    min_chars: int = 1
    max_chars: int = 1000


@register("text_length", TextLengthConfig, "caption length in words and characters within [min, max]")
class TextLength(RuleBase):
    """Score: word count; removed when words or characters fall outside their ranges."""

    measures = "words"

    def score(self, row: dict) -> tuple[int, int]:
        return len(words(row["text"])), len(row["text"].strip())

    def keep(self, value: tuple[int, int]) -> bool:
        c = self.config
        n_words, n_chars = value
        return c.min_words <= n_words <= c.max_words and c.min_chars <= n_chars <= c.max_chars

    def summary(self, value: tuple[int, int]) -> float:
        return float(value[0])


@dataclass(kw_only=True, frozen=True)
class RepetitionConfig:
    max_ratio: float = 0.5  # removed above this share of repeated n-grams
    ngram: int = 1  # 1: repeated words; 2, 3: repeated phrases

    def __post_init__(self) -> None:
        check_range("text_repetition.max_ratio", self.max_ratio, 0.0, 1.0)
        check_range("text_repetition.ngram", self.ngram, 1, 8)


def repetition_ratio(text: str, n: int = 1) -> float:
    """Share of the caption's word n-grams that repeat an earlier one: 0 for "a red circle",
    0.75 for "cat cat cat cat" (3 of 4 words are repeats)."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


@register("text_repetition", RepetitionConfig, "share of repeated word n-grams <= max_ratio")
class TextRepetition(Bounded):
    measures, bound, at_least = "share of repeated n-grams", "max_ratio", False

    def score(self, row: dict) -> float:
        return repetition_ratio(row["text"], self.config.ngram)


@dataclass(kw_only=True, frozen=True)
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes to keep
    # Languages the detector chooses among (ISO 639-1); fewer = faster and less memory.
    candidates: list[str] = field(default_factory=lambda: ["en", "fr", "de", "es", "it", "pt", "nl"])
    min_confidence: float = 0.0  # of the detected language, in [0, 1]

    def __post_init__(self) -> None:
        check_range("language.min_confidence", self.min_confidence, 0.0, 1.0)
        if not set(self.languages) <= set(self.candidates):
            raise ConfigError(f"language.languages {self.languages} must be among language.candidates")


def _detector(codes: list[str]):
    """A lingua detector over the given ISO 639-1 codes (models load lazily, per language)."""
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError:
        raise ConfigError("rule language needs lingua-language-detector: pip install 'vlmkit[curate]'") from None
    langs = []
    for code in codes:
        try:
            langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except (AttributeError, ValueError):
            raise ConfigError(f"language: unknown ISO 639-1 code {code!r}") from None
    if len(langs) < 2:
        raise ConfigError("language.candidates needs at least 2 languages")
    return LanguageDetectorBuilder.from_languages(*langs).build()


@register("language", LanguageConfig, "language identified by lingua is in `languages`", "lingua-language-detector")
class LanguageId(RuleBase):
    """Score: (ISO code or "unknown", confidence); lingua is deterministic for a text."""

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.detector = _detector(config.candidates)

    def score(self, row: dict) -> tuple[str, float]:
        values = self.detector.compute_language_confidence_values(row["text"])
        if not values or values[0].value == 0.0:
            return "unknown", 0.0
        top = values[0]
        return top.language.iso_code_639_1.name.lower(), float(top.value)

    def keep(self, value: tuple[str, float]) -> bool:
        return value[0] in self.config.languages and value[1] >= self.config.min_confidence

    def summary(self, value: tuple[str, float]) -> str:
        return value[0]


_DEFAULT_PATTERNS = {
    "url": [r"https?://", r"\bwww\.", r"\b[\w-]+\.(?:com|org|net|io|jpg|png)\b"],
    "boilerplate": [r"\bclick here\b", r"\ball rights reserved\b", r"\bstock photo\b", r"\bimage may contain\b",
                    r"\bdownload\b", r"\bthumbnail\b", r"\bsubscribe\b"],
    # A short, mild default list; pass your own word list for real data.
    "profanity": [r"\b(?:damn|crap|shit|fuck\w*|bitch\w*|bastard)\b"],
}


@dataclass(kw_only=True, frozen=True)
class PatternsConfig:
    # category -> regular expressions (case-insensitive); a match in any removes the row.
    patterns: dict[str, list[str]] = field(default_factory=lambda: dict(_DEFAULT_PATTERNS))


@register("text_patterns", PatternsConfig, "no URL / profanity / boilerplate regex matches the caption")
class TextPatterns(RuleBase):
    """Score: the first matching category (config order) or "" (clean)."""

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.compiled = []
        for cat, pats in config.patterns.items():
            for p in pats:
                try:
                    self.compiled.append((cat, re.compile(p, re.IGNORECASE)))
                except re.error as e:
                    raise ConfigError(f"text_patterns.patterns.{cat}: bad regex {p!r} ({e})") from None

    def score(self, row: dict) -> str:
        return next((cat for cat, rx in self.compiled if rx.search(row["text"])), "")

    def keep(self, value: str) -> bool:
        return value == ""

    def summary(self, value: str) -> str:
        return value or "clean"
