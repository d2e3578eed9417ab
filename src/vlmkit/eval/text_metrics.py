"""Text metrics for captioning (BLEU, CIDEr-D), VQA (VQA accuracy, exact match) and OCR (CER).

BLEU and CIDEr-D reproduce the COCO caption evaluation code (`pycocoevalcap`, Bleu and Cider)
number for number, given the same tokens: BLEU uses the "closest" reference length and the same
tiny smoothing constants; CIDEr-D uses n = 1..4, sigma = 6, clipped tf-idf and the x10 factor, with
document frequencies taken over the reference sets being scored. The official pipeline first runs
the Java PTB tokenizer; `caption_tokenize` is a Java-free approximation of it (see its docstring),
so absolute numbers can differ slightly from published ones on text with unusual punctuation.

VQA accuracy follows the VQA v2 evaluation script: answer normalisation (punctuation, number
words, articles, contractions) and min(#matching humans / 3, 1) averaged over the ten leave-one-out
subsets of the human answers. Not supported: METEOR, ROUGE-L, SPICE (they need Java).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

from vlmkit.errors import DataError

# ---------------------------------------------------------------------------------------------
# Caption tokenisation
# ---------------------------------------------------------------------------------------------

# PTB splits clitics off their word ("don't" -> "do n't", "dog's" -> "dog 's"); do the same so
# n-gram counts line up with the official pipeline on ordinary captions.
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# A token is a clitic, a number with inner separators ("3.5", "1,000") or a word with inner
# hyphens/apostrophes ("black-and-white", "o'clock"). Everything else (the punctuation the official
# pipeline deletes after PTB tokenisation: . , ? ! : ; - -- ... quotes, brackets) is dropped.
_CAPTION_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\d+(?:[.,]\d+)+|\w+(?:[-']\w+)*")


def caption_tokenize(text: str) -> list[str]:
    """Lower-case `text`, split off clitics and drop punctuation; a Java-free PTB approximation.

    >>> caption_tokenize("A dog's ball, isn't it?")
    ['a', 'dog', "'s", 'ball', 'is', "n't", 'it']
    """
    return _CAPTION_TOKEN.findall(_CLITIC.sub(r" \1", text.lower()))


def _check_pairs(predictions: Sequence, references: Sequence, what: str) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError(f"{what}: pass lists of texts, not a single string")
    if len(predictions) != len(references):
        raise DataError(
            f"{what}: {len(predictions)} predictions but {len(references)} reference entries"
        )
    if len(predictions) == 0:
        raise DataError(f"{what}: no samples to score")


def _check_reference_sets(references: Sequence[Sequence[str]], what: str) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise DataError(f"{what}: sample {i} needs a non-empty list of reference texts")


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of all 1..max_n-grams of `tokens` (tuples as keys)."""
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)
    )


# ---------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------

# The reference implementation adds these to numerator/denominator of every n-gram precision, so a
# sample without any matching 4-gram scores a small positive BLEU-4 (~1e-4), not 0. Kept so that
# per-sample scores agree with it.
_TINY = 1e-15
_SMALL = 1e-9


@dataclass(frozen=True, kw_only=True)
class BleuScore:
    """BLEU-1..BLEU-max_n. `corpus[k]` is corpus-level BLEU-(k+1) (clipped counts and lengths summed
    over all samples before combining); `per_sample[i][k]` is BLEU-(k+1) of sample i alone."""

    corpus: tuple[float, ...]
    per_sample: tuple[tuple[float, ...], ...]


def _bleu_from_counts(
    correct: Sequence[float], guess: Sequence[float], test_len: float, ref_len: float
) -> tuple[float, ...]:
    """Cumulative BLEU-1..n (geometric means of the n-gram precisions) times the brevity penalty."""
    scores, product = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess)):
        product *= (c + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    penalty = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
    return tuple(s * penalty for s in scores)


def bleu(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    max_n: int = 4,
    tokenize: Callable[[str], list[str]] = caption_tokenize,
) -> BleuScore:
    """BLEU (Papineni et al. 2002) as computed by the COCO caption toolkit.

    Args:
        predictions: one generated text per sample.
        references: for each sample, one or more reference texts.
        max_n: largest n-gram order (BLEU-4 is `corpus[3]`).
        tokenize: text -> tokens, applied to predictions and references alike.

    The effective reference length of a sample is the reference length closest to the prediction
    length (ties go to the shorter), as in `pycocoevalcap.bleu.Bleu`.
    """
    _check_pairs(predictions, references, "BLEU")
    _check_reference_sets(references, "BLEU")
    totals = {"correct": [0] * max_n, "guess": [0] * max_n, "test": 0, "ref": 0}
    per_sample = []
    for prediction, refs in zip(predictions, references):
        hyp = tokenize(prediction)
        ref_tokens = [tokenize(r) for r in refs]
        max_ref_counts: Counter = Counter()
        for tokens in ref_tokens:
            max_ref_counts |= _ngrams(tokens, max_n)  # `|` keeps the max count per n-gram
        correct = [0] * max_n
        for gram, count in _ngrams(hyp, max_n).items():
            correct[len(gram) - 1] += min(count, max_ref_counts[gram])
        guess = [max(0, len(hyp) - k) for k in range(max_n)]
        ref_len = min((abs(len(t) - len(hyp)), len(t)) for t in ref_tokens)[1]
        per_sample.append(_bleu_from_counts(correct, guess, len(hyp), ref_len))
        for k in range(max_n):
            totals["correct"][k] += correct[k]
            totals["guess"][k] += guess[k]
        totals["test"] += len(hyp)
        totals["ref"] += ref_len
    corpus = _bleu_from_counts(totals["correct"], totals["guess"], totals["test"], totals["ref"])
    return BleuScore(corpus=corpus, per_sample=tuple(per_sample))


# ---------------------------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CiderScore:
    """CIDEr-D: `corpus` is the mean of `per_sample` (one score per sample, 0..~10 scale)."""

    corpus: float
    per_sample: tuple[float, ...]


def _tfidf(
    counts: Counter, doc_freq: Counter, log_num_docs: float, max_n: int
) -> tuple[list[dict], list[float]]:
    """Per-order tf-idf vectors ({ngram: weight}) and their L2 norms."""
    vectors: list[dict] = [{} for _ in range(max_n)]
    for gram, tf in counts.items():
        # n-grams never seen in the references get df = 1 (log 1 = 0), i.e. the largest idf.
        vectors[len(gram) - 1][gram] = tf * (log_num_docs - math.log(max(1.0, doc_freq[gram])))
    norms = [math.sqrt(sum(w * w for w in v.values())) for v in vectors]
    return vectors, norms


def _cider_d_pair(hyp: tuple, ref: tuple, max_n: int, sigma: float) -> float:
    """Sum over n-gram orders of the clipped cosine similarity times the length penalty."""
    (hyp_vecs, hyp_norms, hyp_len), (ref_vecs, ref_norms, ref_len) = hyp, ref
    # CIDEr-D's Gaussian length penalty discourages gaming the metric with long/short captions.
    penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2.0 * sigma**2))
    total = 0.0
    for n in range(max_n):
        # Clipping min(hyp, ref) stops a repeated n-gram from earning more than the reference has.
        dot = sum(min(w, ref_vecs[n].get(g, 0.0)) * ref_vecs[n].get(g, 0.0)
                  for g, w in hyp_vecs[n].items())
        if hyp_norms[n] > 0.0 and ref_norms[n] > 0.0:
            dot /= hyp_norms[n] * ref_norms[n]
        total += dot * penalty
    return total


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    sigma: float = 6.0,
    max_n: int = 4,
    tokenize: Callable[[str], list[str]] = caption_tokenize,
    idf_references: Sequence[Sequence[str]] | None = None,
) -> CiderScore:
    """CIDEr-D (Vedantam et al. 2015) as computed by `pycocoevalcap.cider.Cider`.

    Args:
        predictions: one generated text per sample.
        references: for each sample, one or more reference texts.
        sigma: std of the Gaussian length penalty.
        max_n: n-gram orders 1..max_n are averaged.
        tokenize: text -> tokens, applied to predictions and references alike.
        idf_references: reference sets to take document frequencies from. Default (as in
            pycocoevalcap): `references` itself, so scores depend on which samples are scored
            together; pass the full split's references to make subsets comparable.
    """
    _check_pairs(predictions, references, "CIDEr-D")
    _check_reference_sets(references, "CIDEr-D")
    idf_sets = references if idf_references is None else idf_references
    _check_reference_sets(idf_sets, "CIDEr-D idf_references")
    doc_freq: Counter = Counter()
    for refs in idf_sets:  # each sample's reference set is one "document"
        doc_freq.update(set().union(*(_ngrams(tokenize(r), max_n) for r in refs)))
    log_num_docs = math.log(float(len(idf_sets)))

    def cook(text: str) -> tuple:
        tokens = tokenize(text)
        return (*_tfidf(_ngrams(tokens, max_n), doc_freq, log_num_docs, max_n), len(tokens))

    scores = []
    for prediction, refs in zip(predictions, references):
        hyp = cook(prediction)
        total = sum(_cider_d_pair(hyp, cook(r), max_n, sigma) for r in refs)
        scores.append(10.0 * total / max_n / len(refs))
    return CiderScore(corpus=sum(scores) / len(scores), per_sample=tuple(scores))


# ---------------------------------------------------------------------------------------------
# VQA accuracy and exact match
# ---------------------------------------------------------------------------------------------

_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
              "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"\d,\d")
# The official regex, "(?!<=\d)(\.)(?!\d)", has a typo'd look-behind that never fires, so in
# effect it deletes every period not followed by a digit ("3.5" survives, "yes." does not).
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Contractions of the VQA script, written with their apostrophes; every spelling with some
# apostrophes missing maps to them. Real words ("well", "its", "id", "hell") are deliberately not
# reachable (hence no "let's", "she's", "we'd"). The script's "I'm"/"I've"/"I'd've" entries are
# omitted: it looks them up after lower-casing, so they never match there either.
_CONTRACTIONS_CANONICAL = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've "
    "should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll that's "
    "there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd "
    "who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_table() -> dict[str, str]:
    table = {}
    for word in _CONTRACTIONS_CANONICAL:
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        for k in range(1, len(cuts) + 1):
            for dropped in combinations(cuts, k):  # drop this subset of the apostrophes
                table["".join(ch for i, ch in enumerate(word) if i not in dropped)] = word
    return table


_CONTRACTIONS = _contraction_table()


def normalize_vqa_answer(answer: str) -> str:
    """VQA v2 answer normalisation: punctuation, lower case, number words -> digits, no articles,
    apostrophe-less contractions restored: "Two dogs." -> "2 dogs", "dont know" -> "don't know".

    Unlike the official script, which skips normalisation when all ten human answers agree, this is
    applied to every prediction and answer (the official answers are already normalised, so the only
    difference is that e.g. a prediction "two" is accepted for the answer "2").
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    # Punctuation next to a space (or any text containing a number like "1,000") is deleted; other
    # punctuation ("black/white") becomes a space. Checks look at the original text, as upstream.
    delete_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if (delete_all or p + " " in text or " " + p in text) else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (normally 10) of one question.

    acc = mean over the leave-one-out subsets S of the answers of min(#{a in S: a == pred} / 3, 1)
    after normalising both sides; e.g. 10 answers with 1, 2, 3, >=4 matches give 0.3, 0.6, 0.9, 1.
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise DataError("VQA accuracy needs >= 2 human answers per question; use exact_match")
    pred = normalize_vqa_answer(prediction)
    matches = sum(normalize_vqa_answer(a) == pred for a in answers)
    # Leaving out a matching answer leaves matches - 1, leaving out any other leaves matches.
    left_out_match = matches * min((matches - 1) / 3.0, 1.0)
    left_out_other = (len(answers) - matches) * min(matches / 3.0, 1.0)
    return (left_out_match + left_out_other) / len(answers)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy over questions (0..1); `answers[i]` are the human answers of question i."""
    _check_pairs(predictions, answers, "VQA accuracy")
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    normalize: Callable[[str], str] | None = normalize_vqa_answer,
) -> float:
    """Fraction of predictions equal to their single reference after `normalize` (None: as is)."""
    _check_pairs(predictions, references, "exact match")
    norm = normalize if normalize is not None else (lambda s: s)
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(predictions)


# ---------------------------------------------------------------------------------------------
# OCR: character error rate
# ---------------------------------------------------------------------------------------------


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit-cost insertions, deletions, substitutions) between sequences."""
    if len(a) < len(b):
        a, b = b, a  # keep the DP row over the shorter sequence
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclass(frozen=True, kw_only=True)
class ErrorRate:
    """`rate` = total edits / total reference length (corpus level, the usual way to report CER);
    `per_sample[i]` = edits_i / len(reference_i), defined as 0.0 for an empty reference with an
    empty prediction and 1.0 for an empty reference with a non-empty prediction."""

    rate: float
    per_sample: tuple[float, ...]
    edits: int
    reference_length: int


def character_error_rate(predictions: Sequence[str], references: Sequence[str]) -> ErrorRate:
    """OCR character error rate: Levenshtein edits over characters / reference characters.

    Texts are compared exactly (case, spaces and punctuation count); normalise them first if the
    benchmark says so. Can exceed 1 when the prediction is much longer than the reference.
    """
    _check_pairs(predictions, references, "CER")
    edits = [edit_distance(p, r) for p, r in zip(predictions, references)]
    lengths = [len(r) for r in references]
    per_sample = tuple(e / n if n else float(e > 0) for e, n in zip(edits, lengths))
    total_edits, total_length = sum(edits), sum(lengths)
    rate = total_edits / total_length if total_length else float(total_edits > 0)
    return ErrorRate(rate=rate, per_sample=per_sample, edits=total_edits,
                     reference_length=total_length)
