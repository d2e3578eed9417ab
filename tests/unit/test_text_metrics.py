"""Tests for vlmkit.eval.text_metrics: BLEU / CIDEr-D against pycocoevalcap, VQA accuracy, CER.

pycocoevalcap normally runs the Java PTB tokenizer first; here both sides get the same tokens from
`caption_tokenize` (joined with spaces for pycocoevalcap, which splits on whitespace), so any
difference is a difference in the metric code. Tolerance: 1e-9 absolute (both are float64).
"""

import random

import pytest

from vlmkit.errors import DataError
from vlmkit.eval.text_metrics import (
    bleu,
    caption_tokenize,
    character_error_rate,
    cider_d,
    edit_distance,
    exact_match,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_score,
)

bleu_ref = pytest.importorskip("pycocoevalcap.bleu.bleu")
cider_ref = pytest.importorskip("pycocoevalcap.cider.cider")

_HANDWRITTEN = [
    ("A man riding a wave on top of a surfboard.",
     ["A man riding a wave on a surfboard.", "A surfer rides a large wave in the ocean.",
      "Man on a surfboard riding an ocean wave.", "A person surfing a big wave.",
      "a surfer is riding the waves on his board"]),
    ("two dogs playing with a frisbee in the park",
     ["Two dogs play with a frisbee on the grass.", "A pair of dogs chasing a frisbee in a park.",
      "Dogs playing in the park with a red frisbee."]),
    ("a plate of food with broccoli and rice",
     ["A plate topped with rice and broccoli.", "A white plate with chicken, rice and broccoli.",
      "Food on a plate including broccoli.", "a dinner plate of rice, meat and vegetables",
      "A close up of a plate of food."]),
    ("a cat", ["A cat sleeping on a couch.", "The cat is lying on the sofa's arm."]),
    ("", ["An empty street at night.", "A street with no cars."]),
    ("a black-and-white photo of a train at the station",
     ["A black-and-white photo of a train.", "An old train pulls into a station.",
      "A train isn't moving at the station."]),
]


def _random_sample(seed: int, n: int) -> tuple[list[str], list[list[str]]]:
    """Captions built from shared phrases so that 3- and 4-grams do match sometimes."""
    rng = random.Random(seed)
    subjects = ["a man", "a woman", "two dogs", "a red bus", "the small cat", "a group of people"]
    verbs = ["is sitting on", "stands next to", "is riding", "walks along", "looks at"]
    objects = ["a bench", "the beach", "a busy street", "a wooden table", "a green field"]
    extras = ["", " in the sun", " at night", " near a tree", " with a bag"]

    def caption() -> str:
        words = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        return (words + rng.choice(extras)).capitalize() + rng.choice([".", "", " ."])

    preds = [caption() for _ in range(n)]
    refs = [[caption() for _ in range(rng.randint(1, 5))] for _ in range(n)]
    for i in range(0, n, 3):  # make some predictions copy a reference exactly
        refs[i][0] = preds[i]
    return preds, refs


def _reference_scores(preds, refs):
    res = {i: [" ".join(caption_tokenize(p))] for i, p in enumerate(preds)}
    gts = {i: [" ".join(caption_tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    b_corpus, b_per = bleu_ref.Bleu(4).compute_score(gts, res, verbose=0)
    c_corpus, c_per = cider_ref.Cider().compute_score(gts, res)
    return b_corpus, b_per, c_corpus, c_per


@pytest.mark.parametrize("sample", ["handwritten", "random"])
def test_bleu_and_cider_match_pycocoevalcap(sample):
    if sample == "handwritten":
        preds, refs = [p for p, _ in _HANDWRITTEN], [r for _, r in _HANDWRITTEN]
    else:
        preds, refs = _random_sample(seed=0, n=60)
    b_corpus, b_per, c_corpus, c_per = _reference_scores(preds, refs)

    ours_b = bleu(preds, refs)
    ours_c = cider_d(preds, refs)
    assert ours_b.corpus == pytest.approx(b_corpus, abs=1e-9, rel=0)
    for k in range(4):
        got = [s[k] for s in ours_b.per_sample]
        assert got == pytest.approx(list(b_per[k]), abs=1e-9, rel=0)
    assert ours_c.corpus == pytest.approx(float(c_corpus), abs=1e-9, rel=0)
    assert list(ours_c.per_sample) == pytest.approx(list(c_per), abs=1e-9, rel=0)
    assert 0.05 < ours_b.corpus[3] < 0.95 and ours_c.corpus > 0.1  # the sample is not degenerate


def test_bleu_hand_computed():
    # hyp "the cat sat on the mat" (6 tokens) vs ref "the cat is on the mat" (6 tokens):
    # 1-grams 5/6 (sat missing), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4, 4-grams 0/3.
    score = bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert score.corpus[0] == pytest.approx(5 / 6)
    assert score.corpus[1] == pytest.approx((5 / 6 * 3 / 5) ** 0.5)
    assert score.corpus[2] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert score.corpus[3] < 1e-3  # no matching 4-gram: only the reference's smoothing remains
    # Brevity penalty: a 3-token prefix against a 6-token reference has precision 1, BP = e^(1-2).
    short = bleu(["the cat is"], [["the cat is on the mat", "a b c d e f g h"]])
    assert short.corpus[0] == pytest.approx(2.718281828459045 ** (1 - 6 / 3))


def test_cider_properties():
    refs = [["a man riding a horse", "a person rides a brown horse"],
            ["a bowl of fruit on a table", "fruit in a bowl"],
            ["a plane in the sky", "an airplane flying in a blue sky"]]
    perfect = cider_d([r[0] for r in refs], refs)
    worse = cider_d(["a man riding a bike", "a bowl of soup", "a bird in the sky"], refs)
    assert all(p > w for p, w in zip(perfect.per_sample, worse.per_sample))
    assert perfect.corpus == pytest.approx(sum(perfect.per_sample) / 3)
    # Document frequencies come from the scored set; a single sample has idf 0 for every ref n-gram.
    assert cider_d(["a man riding a horse"], refs[:1]).corpus == 0.0
    # With idf from the full set, scoring a subset equals that sample's score in the full run.
    sub = cider_d(["a man riding a bike"], refs[:1], idf_references=refs)
    assert sub.corpus == pytest.approx(worse.per_sample[0])


def test_caption_tokenize():
    tokens = caption_tokenize("A dog's ball, isn't it?")
    assert tokens == ["a", "dog", "'s", "ball", "is", "n't", "it"]
    assert caption_tokenize("Black-and-white photo -- 3.5 m (1,000 kg).") == [
        "black-and-white", "photo", "3.5", "m", "1,000", "kg"]


def test_text_metrics_reject_bad_input():
    with pytest.raises(DataError, match="2 predictions but 1"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(DataError, match="sample 0"):
        cider_d(["a"], [[]])
    with pytest.raises(DataError, match="not a single string"):
        character_error_rate("abc", "abd")


# ------------------------------------------------------------------------------------------------
# VQA
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("The dog.", "dog"),
        ("yes!", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("red, white", "red white"),
        ("black/white", "black white"),
        ("dont know", "don't know"),
        ("Its a cant", "its can't"),  # "its" is a word and stays; articles go
        ("  a\tman's hat\n", "man's hat"),
        ("none", "0"),
        ("well", "well"),
    ],
)
def test_normalize_vqa_answer(raw, normalized):
    assert normalize_vqa_answer(raw) == normalized


def _leave_one_out_reference(prediction: str, answers: list[str]) -> float:
    """VQA accuracy written out literally: average over the 10 subsets of 9 answers."""
    pred = normalize_vqa_answer(prediction)
    norm = [normalize_vqa_answer(a) for a in answers]
    accs = []
    for left_out in range(len(norm)):
        others = norm[:left_out] + norm[left_out + 1:]
        accs.append(min(sum(a == pred for a in others) / 3, 1.0))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9),
                                                   (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_known_values(matches, expected):
    answers = ["two"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)
    assert vqa_accuracy("2", answers) == pytest.approx(_leave_one_out_reference("2", answers))


def test_vqa_score_matches_literal_formula():
    rng = random.Random(1)
    vocab = ["yes", "no", "2", "two", "red", "Red.", "a dog", "dog", "blue"]
    preds = [rng.choice(vocab) for _ in range(40)]
    answers = [[rng.choice(vocab) for _ in range(rng.choice([5, 10]))] for _ in range(40)]
    expected = sum(_leave_one_out_reference(p, a) for p, a in zip(preds, answers)) / 40
    assert vqa_score(preds, answers) == pytest.approx(expected)
    with pytest.raises(DataError, match="exact_match"):
        vqa_accuracy("yes", ["yes"])


def test_exact_match():
    score = exact_match(["Two dogs.", "yes", "no"], ["2 dogs", "Yes", "maybe"])
    assert score == pytest.approx(2 / 3)
    assert exact_match(["Yes"], ["yes"], normalize=None) == 0.0


# ------------------------------------------------------------------------------------------------
# OCR
# ------------------------------------------------------------------------------------------------

def test_edit_distance_and_cer():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "abc") == 0
    result = character_error_rate(["kitten", "abc", ""], ["sitting", "abd", ""])
    assert result.edits == 4 and result.reference_length == 10
    assert result.rate == pytest.approx(0.4)
    assert result.per_sample == pytest.approx((3 / 7, 1 / 3, 0.0))
    assert character_error_rate(["x"], [""]).per_sample == (1.0,)
