"""Continuous batching (vlmkit.serving.scheduler over generation.batching) on the bundled model:
rows admitted at different steps, with different prompt lengths, into freed rows, produce
exactly the tokens of `Pipeline.generate` run alone (bit for bit in bf16: test_scheduler_exact.py); cancellation frees rows; n, seeds, stops."""

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.errors import VlmkitError
from vlmkit.generation import SamplingConfig
from vlmkit.generation.batching import BatchedCache, lanes_up
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.models.registry import family_of
from vlmkit.serving.scheduler import QueueFullError, Request, Scheduler

PROMPTS = ["caption en", "detect circle ; square", "answer en what colour is it?"]
COLOURS = ["red", "blue", "green"]


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def pipe(request):
    return vlmkit.load(dtype=request.param)


def _image(i):
    img = Image.new("RGB", (64, 64), COLOURS[i % 3])
    img.paste("white", (8 * i % 40, 10, 8 * i % 40 + 20, 30))
    return img


def _request(pipe, i, sampling, n=1, events=None):
    events = [] if events is None else events
    batch = pipe.processor([PROMPTS[i % 3]], [[_image(i)]], padding_side="left")
    return Request(batch, sampling, events.append, n=n), events


def _tokens(events, index=0):
    return [e.token_id for e in events if e.index == index and e.token_id is not None]


def _drain(sched):
    while sched.active_rows or sched._waiting:
        sched.iterate()


@pytest.mark.parametrize("max_len", [400, 110])  # 110: barely more than one request needs
def test_rows_admitted_later_match_generate_alone(pipe, max_len):
    cfg = SamplingConfig(max_new_tokens=10)
    sched = Scheduler(pipe, max_batch=3, max_len=max_len)
    sched.open()
    runs = []
    for i in range(5):  # arrivals at steps 0, 2, 4, 6, 8: more requests than rows
        req, events = _request(pipe, i, cfg)
        sched.submit(req)
        runs.append(events)
        sched.iterate()
        sched.iterate()
    _drain(sched)
    for i, events in enumerate(runs):
        alone = pipe.generate(PROMPTS[i % 3], _image(i), cfg)
        assert _tokens(events) == alone.token_ids, i
        assert "".join(e.text for e in events) == alone.text
        assert events[-1].finish == alone.finish_reason
    assert sched.cache.active == {}


def _alone(lm, inputs, steps):
    """Greedy tokens of one prompt with the plain static-cache loop (decode.py), on the cache
    length `Pipeline` uses (whole 16-slot lane groups, see generation/batching.py)."""
    logits, state = prefill(lm, inputs.embeds, inputs.attention_mask, inputs.in_prefix, inputs.positions,
                            lanes_up(inputs.embeds.shape[1] + steps))
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax(-1)))
        pos, slot = advance(state)
        logits = decode_one_token(lm, torch.tensor([[out[-1]]]), pos, slot, state.key_valid, state.in_prefix)
    lm.clear_caches()
    return out


@torch.inference_mode()
def test_batched_cache_rows_grow_from_slot_0_and_equal_lone_runs(pipe):
    """Row A runs from step 0, B joins at step 20, A ends at 30, C joins at 34 into A's old row
    (its stale keys masked): each row keeps its keys at slots [0, length) as a lone run does, and
    all three equal their lone runs token for token."""
    adapter = family_of(pipe.model).generation
    lm = adapter.decoder(pipe.model)
    inputs = [adapter.prepare(pipe.model, pipe.processor([PROMPTS[i]], [[_image(i)]], padding_side="left"))
              for i in (0, 1, 2)]
    want = [_alone(lm, x, 30) for x in inputs]
    cache = BatchedCache(lm, 2, 130, next(pipe.model.parameters()).dtype, "cpu")
    got, last, arrive = {0: [], 1: [], 2: []}, {}, {0: 0, 1: 20, 2: 34}
    rows = {}
    for step in range(80):
        for r, t in arrive.items():
            if t == step:
                T = inputs[r].embeds.shape[1]
                row = cache.free_row()
                rows[row], last[row] = r, int(cache.prefill(row, inputs[r], T + 30).argmax(-1))
                got[r].append(last[row])
                assert int(cache.length[row]) == T and bool(cache.key_valid[row, :T].all())
                assert not cache.key_valid[row, T:].any()
        for row in [row for row, r in rows.items() if len(got[r]) == 30]:
            cache.free(row)
            del rows[row], last[row]
        if not rows:
            break
        logits = cache.decode(dict(last))
        for i, row in enumerate(list(last)):
            last[row] = int(logits[i].argmax(-1))
            got[rows[row]].append(last[row])
    cache.close()
    assert [got[r] for r in range(3)] == want
    assert sorted(arrive) == [0, 1, 2] and len({x.embeds.shape[1] for x in inputs}) == 3  # three prompt lengths


def test_cancel_frees_the_row(pipe):
    sched = Scheduler(pipe, max_batch=2, max_len=200)
    sched.open()
    req, events = _request(pipe, 0, SamplingConfig(max_new_tokens=50))
    other, other_events = _request(pipe, 1, SamplingConfig(max_new_tokens=6))
    sched.submit(req)
    sched.submit(other)
    sched.iterate()
    sched.iterate()
    assert sched.active_rows == 2
    sched.cancel(req)
    sched.iterate()
    assert sched.active_rows == 1 and events[-1].finish == "cancelled"
    _drain(sched)
    assert _tokens(other_events) == pipe.generate(PROMPTS[1], _image(1), SamplingConfig(max_new_tokens=6)).token_ids


def test_n_choices_and_seeds(pipe):
    sched = Scheduler(pipe, max_batch=4, max_len=200)
    sched.open()
    greedy, g_events = _request(pipe, 0, SamplingConfig(max_new_tokens=6), n=3)
    sampled, s_events = _request(pipe, 0, SamplingConfig(max_new_tokens=6, temperature=1.0, seed=7), n=1)
    sched.submit(greedy)
    sched.submit(sampled)
    _drain(sched)
    alone = pipe.generate(PROMPTS[0], _image(0), SamplingConfig(max_new_tokens=6)).token_ids
    assert [_tokens(g_events, i) for i in range(3)] == [alone] * 3
    seeded = pipe.generate(PROMPTS[0], _image(0), SamplingConfig(max_new_tokens=6, temperature=1.0, seed=7))
    assert _tokens(s_events) == seeded.token_ids  # choice 0 of seed s samples as a lone request


def test_stop_string_ends_the_row(pipe):
    alone = pipe.generate(PROMPTS[1], _image(1), SamplingConfig(max_new_tokens=10))
    stop = alone.text[len(alone.text) // 2:][:3]
    sched = Scheduler(pipe, max_batch=2, max_len=200)
    sched.open()
    req, events = _request(pipe, 1, SamplingConfig(max_new_tokens=10, stop_strings=(stop,)))
    sched.submit(req)
    _drain(sched)
    assert events[-1].finish == "stop_string"
    assert "".join(e.text for e in events) == alone.text[:alone.text.index(stop)]


def test_queue_limit_and_oversized_requests(pipe):
    sched = Scheduler(pipe, max_batch=2, max_len=80, max_queue=1)
    sched.open()
    sched.submit(_request(pipe, 0, SamplingConfig(max_new_tokens=4))[0])
    with pytest.raises(QueueFullError):
        sched.submit(_request(pipe, 0, SamplingConfig(max_new_tokens=4))[0])
    with pytest.raises(VlmkitError, match="cache slots"):
        sched.submit(_request(pipe, 0, SamplingConfig(max_new_tokens=40))[0])
    with pytest.raises(VlmkitError, match="max-batch"):
        sched.submit(_request(pipe, 0, SamplingConfig(max_new_tokens=4), n=3)[0])


def test_image_features_cached_and_encoded_one_by_one(pipe, monkeypatch):
    """A repeated image is encoded once; each new image alone (the batch of a lone run: a batch of
    M images runs the tower's bf16 linear layers at another batch size)."""
    calls = []
    real = pipe.model.encode_images
    monkeypatch.setattr(pipe.model, "encode_images", lambda px: (calls.append(px.shape[0]), real(px))[1])
    pipe._features.clear()  # the scheduler uses the pipeline's feature cache, which earlier tests filled
    sched = Scheduler(pipe, max_batch=4, max_len=200)
    sched.open()
    cfg = SamplingConfig(max_new_tokens=5)
    runs = [_request(pipe, i, cfg) for i in (0, 1, 0)]
    for req, _ in runs:
        sched.submit(req)
    _drain(sched)
    assert calls == [1, 1]  # two images, the repeated one encoded once
    monkeypatch.undo()
    for (req, events), i in zip(runs, (0, 1, 0)):
        assert _tokens(events) == pipe.generate(PROMPTS[i], _image(i), cfg).token_ids


def test_freed_row_between_busy_rows_is_reused(pipe, monkeypatch):
    """Each prompt is prefilled alone into the lowest free row, also a row between busy ones
    whose stale keys are masked; each request equals its lone run."""
    sched = Scheduler(pipe, max_batch=4, max_len=200)
    sched.open()
    placed = []
    real = sched.cache.prefill
    monkeypatch.setattr(sched.cache, "prefill", lambda row, *a: (placed.append(row), real(row, *a))[1])
    long, short = SamplingConfig(max_new_tokens=20), SamplingConfig(max_new_tokens=2)
    runs = [_request(pipe, i, cfg) + (i, cfg) for i, cfg in ((1, short), (0, long), (3, long))]
    for req, *_ in runs:
        sched.submit(req)
    sched.iterate()
    while sched.active_rows == 3:
        sched.iterate()
    assert sorted(sched.cache.active) == [1, 2]  # the short request's row 0 is free again
    later = [_request(pipe, i, long) + (i, long) for i in (2, 5)]
    for req, *_ in later:
        sched.submit(req)
    _drain(sched)
    assert placed == [0, 1, 2, 0, 3]
    for _, events, i, cfg in runs + later:
        assert _tokens(events) == pipe.generate(PROMPTS[i % 3], _image(i), cfg).token_ids, i


def test_timeout_while_decoding_ends_the_request_and_frees_its_rows(pipe):
    sched = Scheduler(pipe, max_batch=2, max_len=200)
    sched.open()
    req, events = _request(pipe, 0, SamplingConfig(max_new_tokens=50), n=2)
    other, other_events = _request(pipe, 1, SamplingConfig(max_new_tokens=6))
    sched.submit(req)
    sched.iterate()
    sched.submit(other)  # waits: both rows are the first request's
    assert sched.active_rows == 2 and not events[-1].error
    req.timeout = 0.0  # passed now (Request.expired compares with the time since submission)
    sched.iterate()
    assert "--request-timeout" in str(events[-1].error) and events[-1].error.__class__.__name__ == "RequestTimeoutError"
    _drain(sched)
    assert sched.cache.active == {}
    assert _tokens(other_events) == pipe.generate(PROMPTS[1], _image(1), SamplingConfig(max_new_tokens=6)).token_ids
