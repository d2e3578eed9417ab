"""The eval runner end to end on a fake pipeline with fixed answers: scores known by hand."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from vlmkit.errors import ConfigError, DataError
from vlmkit.eval.runner import (evaluate, predictions_path, read_manifest, select_rows,
                                write_report)
from vlmkit.eval.text_metrics import cider_d
from vlmkit.tasks.parsing import Box, boxes_to_loc_text

# Each test image is a solid colour, so the fake pipeline can tell which image it was given.
COLORS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]


class FakePipe:
    """`generate_batch` answering from {(image index, prompt): text}; records batch sizes."""

    def __init__(self, answers: dict[tuple[int, str], str]):
        self.answers, self.batches = answers, []

    def generate_batch(self, prompts, images, sampling=None):
        self.batches.append(len(prompts))
        out = []
        for prompt, image in zip(prompts, images):
            index = COLORS.index(image.getpixel((0, 0)))
            out.append(SimpleNamespace(text=self.answers.get((index, prompt), "") + "<eos>"))
        return out


@pytest.fixture
def images(tmp_path):
    """Five solid images; image 1 is 96x80 (not square, not 64) for the detection size check."""
    paths = []
    for i, color in enumerate(COLORS):
        size = (96, 80) if i == 1 else (64, 64)
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, color).save(paths[-1])
    return [str(p) for p in paths]


def _row(image, prefix, suffix, task, **kw):
    return {"image": image, "prefix": prefix, "suffix": suffix, "task": task, **kw}


def test_caption_groups_references_and_scores(images):
    refs = {0: ["a red circle and a star", "a red round circle and a star"], 1: ["a blue square on grey"],
            2: ["a green star and a word", "one green star and one word"]}
    rows = [_row(images[i], "caption en", r, "caption") for i, rs in refs.items() for r in rs]
    rows.append(_row(images[0], "answer en what?", "red", "vqa"))  # another task: ignored
    preds = {0: "a red circle and a star", 1: "a blue circle on grey", 2: "a yellow star and a word"}
    pipe = FakePipe({(i, "caption en"): p for i, p in preds.items()})
    report = evaluate(pipe, rows, "caption", batch_size=2)
    assert report.num_examples == 3  # five caption rows, three images
    assert [e["references"] for e in report.examples] == list(refs.values())
    assert report.metrics["exact_match"] == pytest.approx(1 / 3)
    want = cider_d(list(preds.values()), list(refs.values()))
    assert report.metrics["cider_d"] == pytest.approx(want.corpus)
    assert [e["score"] for e in report.examples] == pytest.approx(want.per_sample)
    assert pipe.batches == [2, 1]

    perfect = FakePipe({(i, "caption en"): rs[0] for i, rs in refs.items()})
    best = evaluate(perfect, rows, "caption", batch_size=8)
    assert best.metrics["bleu_4"] == pytest.approx(1.0)
    assert best.metrics["exact_match"] == 1.0
    assert best.metrics["cider_d"] > report.metrics["cider_d"]


def test_vqa_exact_match_and_vqa_accuracy(images):
    rows = [
        _row(images[0], "answer en how many?", "2", "vqa", subtask="count"),
        _row(images[1], "answer en is there?", "yes", "vqa", subtask="exist"),
        _row(images[2], "answer en what color?", "blue", "vqa", subtask="color"),
        # Ten human answers: two say "2", eight say "3" -> a "two" earns 0.6, exact (vs "3") fails.
        _row(images[3], "answer en how many?", "3", "vqa", subtask="count", answers=["2"] * 2 + ["3"] * 8),
    ]
    pipe = FakePipe({(0, "answer en how many?"): "Two", (1, "answer en is there?"): "yes.",
                     (2, "answer en what color?"): "red", (3, "answer en how many?"): "two"})
    report = evaluate(pipe, rows, "vqa", batch_size=3)
    assert [e["score"] for e in report.examples] == pytest.approx([1.0, 1.0, 0.0, 0.6])
    assert report.metrics["accuracy"] == pytest.approx(2.6 / 4)
    assert report.metrics["exact_match"] == pytest.approx(2 / 4)
    assert report.by_subtask["count"] == {"n": 2, "score": pytest.approx(0.8)}
    assert report.by_subtask["color"]["score"] == 0.0


def test_vqa_answers_as_dicts_and_bad_answers(images):
    rows = [_row(images[0], "answer en q?", "x", "vqa", answers=[{"answer": "yes"}] * 10)]
    assert evaluate(FakePipe({(0, "answer en q?"): "yes"}), rows, "vqa").metrics["accuracy"] == 1.0
    with pytest.raises(DataError, match="answers"):
        evaluate(FakePipe({}), [_row(images[0], "answer en q?", "x", "vqa", answers="yes")], "vqa")


def _det_rows(images):
    return [
        _row(images[0], "detect circle ; square", "", "detect",
             boxes=[[8, 8, 24, 24], [40, 40, 56, 56]], labels=["circle", "square"], image_size=[64, 64]),
        # No image_size: boxes are in pixels of the real 96x80 image.
        _row(images[1], "detect circle", "", "detect", boxes=[[10, 30, 26, 46]], labels=["circle"]),
        _row(images[2], "detect square", "", "detect", boxes=[[20, 20, 36, 36]], labels=["square"],
             image_size=[64, 64]),
    ]


def test_detection_precision_recall_and_map(images):
    a = boxes_to_loc_text([Box("circle", 8, 8, 24, 24), Box("square", 40, 40, 56, 56)], 64, 64)
    b = boxes_to_loc_text([Box("circle", 10, 30, 26, 46), Box("square", 0, 0, 10, 10)], 96, 80)
    pipe = FakePipe({(0, "detect circle ; square"): a, (1, "detect circle"): b})
    report = evaluate(pipe, _det_rows(images), "detect")
    m = report.metrics
    # tp: 2 (row 0) + 1 (row 1); fp: the extra square of row 1; fn: the missed square of row 2.
    assert m["precision_50"] == pytest.approx(0.75) and m["recall_50"] == pytest.approx(0.75)
    # AP circle = 1; AP square: a hit then a miss with 2 truths -> precision 1 up to recall 0.5.
    assert m["map_50"] == pytest.approx((1 + 51 / 101) / 2)
    assert m["map_50_95"] == pytest.approx(m["map_50"])  # integer pixel boxes survive the loc bins
    assert m["parse_error_rate"] == 0.0
    ex = report.examples
    assert [(e["tp"], e["fp"], e["fn"]) for e in ex] == [(2, 0, 0), (1, 1, 0), (0, 0, 1)]
    assert [e["score"] for e in ex] == pytest.approx([1.0, 2 / 3, 0.0])
    assert ex[1]["pred_boxes"][0][0] == "circle"


def test_detection_truth_parsed_from_suffix_and_garbage_output(images):
    truth = boxes_to_loc_text([Box("star", 16, 16, 48, 32)], 64, 64)
    rows = [_row(images[0], "detect star", truth, "detect")]
    good = evaluate(FakePipe({(0, "detect star"): truth}), rows, "detect")
    assert good.metrics["map_50"] == pytest.approx(1.0)
    bad = evaluate(FakePipe({(0, "detect star"): "<loc0001> star"}), rows, "detect")
    assert bad.metrics["recall_50"] == 0.0 and bad.metrics["parse_error_rate"] == 1.0
    with pytest.raises(DataError, match="cannot parse"):
        evaluate(FakePipe({}), [_row(images[0], "detect star", "no boxes here", "detect")], "detect")


def test_detection_without_any_truth_writes_null_map(images, tmp_path):
    rows = [_row(images[0], "detect cat", "", "detect", boxes=[], labels=[], image_size=[64, 64])]
    report = evaluate(FakePipe({}), rows, "detect")
    assert report.examples[0]["score"] == 1.0  # nothing there, nothing predicted
    summary, _ = write_report(report, tmp_path / "d.json")
    assert json.loads(summary.read_text())["metrics"]["map_50"] is None


def test_ocr_cer_and_exact_match(images):
    rows = [_row(images[i], "ocr", w, "ocr") for i, w in enumerate(["CAT", "DOG", "COW"])]
    pipe = FakePipe({(0, "ocr"): "CAT", (1, "ocr"): "D0G", (2, "ocr"): "cow"})
    report = evaluate(pipe, rows, "ocr")
    assert report.metrics["cer"] == pytest.approx(4 / 9)  # 0 + 1 + 3 case-sensitive edits
    assert report.metrics["exact_match"] == pytest.approx(1 / 3)
    assert [e["cer"] for e in report.examples] == pytest.approx([0, 1 / 3, 1])


def test_batch_size_does_not_change_results(images):
    rows = [_row(images[i], "ocr", w, "ocr") for i, w in enumerate(["A", "BB", "CCC", "DD", "E"])]
    pipe = FakePipe({(i, "ocr"): t for i, t in enumerate(["A", "B", "CCC", "XX", ""])})
    one, many = evaluate(pipe, rows, "ocr", batch_size=1), evaluate(pipe, rows, "ocr", batch_size=4)
    assert one.metrics == many.metrics
    assert pipe.batches == [1] * 5 + [4, 1]


def test_select_rows_filters_limits_and_rejects(images):
    rows = [_row(images[0], "ocr", "A", "ocr"), _row(images[1], "ocr", "B", "ocr"),
            _row(images[0], "caption en", "x", "caption")]
    assert [r["suffix"] for r in select_rows(rows, "ocr", limit=1)] == ["A"]
    assert select_rows(select_rows(rows, "caption"), "caption")[0]["references"] == ["x"]  # idempotent
    no_task = [{k: v for k, v in r.items() if k != "task"} for r in rows[:2]]
    assert len(select_rows(no_task, "ocr")) == 2  # a single-task manifest without "task" fields
    with pytest.raises(DataError, match="no 'vqa' rows"):
        select_rows(rows, "vqa")
    with pytest.raises(ConfigError, match="unknown eval task"):
        select_rows(rows, "segment")
    with pytest.raises(ConfigError, match="limit"):
        select_rows(rows, "ocr", limit=0)
    with pytest.raises(DataError, match="suffix"):
        select_rows([_row(images[0], "ocr", " ", "ocr")], "ocr")


def test_read_manifest_resolves_paths_and_names_bad_lines(tmp_path):
    good = tmp_path / "m.jsonl"
    good.write_text(json.dumps(_row("img/a.png", "ocr", "A", "ocr")) + "\n\n")
    rows = read_manifest(good)
    assert rows[0]["image"] == str(tmp_path / "img" / "a.png") and rows[0]["line"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row("a.png", "ocr", "A", "ocr")) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not valid JSON"):
        read_manifest(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")


def test_write_report_json_and_predictions(images, tmp_path):
    rows = [_row(images[i], "ocr", w, "ocr") for i, w in enumerate(["CAT", "DOG"])]
    report = evaluate(FakePipe({(0, "ocr"): "CAT"}), rows, "ocr")
    summary, preds = write_report(report, tmp_path / "out" / "ocr.json")
    assert preds == predictions_path(summary) == tmp_path / "out" / "ocr.predictions.jsonl"
    data = json.loads(summary.read_text())
    assert data["task"] == "ocr" and data["num_examples"] == 2
    assert data["metrics"]["exact_match"] == 0.5
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [(x["prediction"], x["references"]) for x in lines] == [("CAT", ["CAT"]), ("", ["DOG"])]
    table = report.format_table()
    assert "cer" in table and "exact_match" in table and "2 examples" in table
