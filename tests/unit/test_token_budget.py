"""Token-budget batching (`vlmkit.training.token_budget`): greedy batches within the budget, the
stream's order, determinism, exact resume at every step (across epochs), over-budget rows."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.datasets import JsonlDataset, ShuffledStream
from vlmkit.errors import ConfigError, DataError
from vlmkit.training.config import TrainConfig, apply_overrides, check_run_fields
from vlmkit.training.token_budget import TokenBudgetStream, make_batches

LENGTHS = [60, 50, 70, 30, 90, 10, 128, 40, 55, 20, 75]
BUDGET = 128


class Measured:
    """A map-style dataset of samples {"id", "num_tokens"} (as JsonlDataset(budget=...) hands them out)."""

    def __init__(self, lengths):
        self.lengths = list(lengths)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return {"id": i, "num_tokens": self.lengths[i]}


def batches(seed=0, lengths=LENGTHS) -> TokenBudgetStream:
    return TokenBudgetStream(ShuffledStream(Measured(lengths), seed=seed), None, BUDGET, collate_fn=list)


def ids(batch):
    return [s["id"] for s in batch]


def test_batches_are_greedy_runs_of_the_stream_within_the_budget():
    stream = batches()
    order = [s["id"] for s in ShuffledStream(Measured(LENGTHS), seed=0)]  # one epoch's order
    cut, seen = [stream.next_batch() for _ in range(6)], []
    for batch, after in zip(cut, cut[1:]):
        total = sum(s["num_tokens"] for s in batch)
        assert total <= BUDGET < total + after[0]["num_tokens"]  # the next example would not fit
        seen += ids(batch)
    assert seen[: len(order)] == order[: len(seen)]  # consecutive examples, nothing dropped or repeated
    assert len({len(b) for b in cut}) > 1  # counts follow the lengths


def test_a_lone_example_fills_a_batch_up_to_the_budget():
    stream = TokenBudgetStream(ShuffledStream(Measured([BUDGET, BUDGET])), None, BUDGET, collate_fn=list)
    assert [len(stream.next_batch()) for _ in range(3)] == [1, 1, 1]


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = batches(), batches(), batches(seed=1)
    first = [ids(a.next_batch()) for _ in range(8)]
    assert first == [ids(b.next_batch()) for _ in range(8)]
    assert first != [ids(c.next_batch()) for _ in range(8)]


@pytest.mark.parametrize("stop", range(1, 12))
def test_resume_from_any_step_continues_with_the_same_batches(stop):
    """Stopped after `stop` batches (some with an example held back, some across an epoch), a
    fresh stream loaded from the state cuts the uninterrupted run's next batches."""
    full = batches()
    expected = [ids(full.next_batch()) for _ in range(stop + 6)][stop:]
    first = batches()
    for _ in range(stop):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = batches()
    resumed.load_state_dict(state)
    assert [ids(resumed.next_batch()) for _ in range(6)] == expected
    assert [ids(first.next_batch()) for _ in range(6)] == expected  # saving changed nothing


def test_an_unmeasured_or_over_budget_sample_is_an_error():
    with pytest.raises(DataError, match="an example of 129 tokens is longer than data.max_tokens_per_batch=128"):
        batches(lengths=[129]).next_batch()
    unmeasured = TokenBudgetStream(ShuffledStream([{"id": 0}]), None, BUDGET, collate_fn=list)
    with pytest.raises(ConfigError, match="measured up front"):
        unmeasured.next_batch()


def test_make_batches_needs_measured_rows():
    with pytest.raises(ConfigError, match="needs a JSONL manifest"):
        make_batches(ShuffledStream([{"id": 0}]), None, 1, list, BUDGET)
    assert type(make_batches(ShuffledStream(Measured(LENGTHS)), None, 2, list, None)).__name__ == "BatchStream"


def _manifest(tmp_path, suffixes):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "prefix": "p", "suffix": s} for s in suffixes]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_measures_rows_and_names_the_first_over_budget_one(tmp_path):
    path = _manifest(tmp_path, ["ab", "abcdefgh", "abc", "abcdefghij"])
    length = lambda row: len(row["prefix"]) + len(row["suffix"])  # noqa: E731
    with pytest.raises(DataError, match=r"rows.jsonl:2 has 9 tokens, more than data.max_tokens_per_batch=5 "
                                        r"\(pass --data.bad_rows skip"):
        JsonlDataset(path, length_fn=length, bad_rows="error", budget=5)
    ds = JsonlDataset(path, length_fn=length, bad_rows="skip", budget=5)
    assert ds.skipped == {"over_budget": 2} and ds.lengths == [3, 4]
    assert [ds[i]["num_tokens"] for i in range(len(ds))] == [3, 4]
    assert "num_tokens" not in JsonlDataset(path, length_fn=length)[0]  # no budget: nothing measured


def test_config_field():
    cfg = apply_overrides(TrainConfig(), {"data.max_tokens_per_batch": "4096"})
    assert cfg.data.max_tokens_per_batch == 4096
    with pytest.raises(ConfigError, match="data.max_tokens_per_batch must be >= 1, got 0"):
        check_run_fields(apply_overrides(TrainConfig(), {"data.max_tokens_per_batch": "0"}))
