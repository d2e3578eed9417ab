"""Continuous batching (vlmkit.serving.scheduler over generation.batching) on the bundled model:
rows admitted at different steps, with different prompt lengths, through cache shifts, produce
exactly the tokens of `Pipeline.generate` run alone; cancellation frees rows; n, seeds, stops."""

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.errors import VlmkitError
from vlmkit.generation import SamplingConfig
from vlmkit.generation.batching import BatchedCache
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


@pytest.mark.parametrize("max_len", [400, 110])  # 110: rows wait for room, the cache shifts
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
    """Greedy tokens of one prompt with the plain static-cache loop (decode.py)."""
    logits, state = prefill(lm, inputs.embeds, inputs.attention_mask, inputs.in_prefix, inputs.positions,
                            inputs.embeds.shape[1] + steps)
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax(-1)))
        pos, slot = advance(state)
        logits = decode_one_token(lm, torch.tensor([[out[-1]]]), pos, slot, state.key_valid, state.in_prefix)
    lm.clear_caches()
    return out


@torch.inference_mode()
def test_batched_cache_compacts_left_and_stays_exact(pipe):
    """Row A runs from step 0, B joins at step 20, A ends at 30, C joins at 34: C only fits after
    every row is shifted left (compaction); all three equal their lone runs token for token."""
    adapter = family_of(pipe.model).generation
    lm = adapter.decoder(pipe.model)
    inputs = [adapter.prepare(pipe.model, pipe.processor([PROMPTS[i]], [[_image(i)]], padding_side="left"))
              for i in (0, 1, 0)]
    want = [_alone(lm, x, 30) for x in inputs]
    cache = BatchedCache(lm, 2, 130, next(pipe.model.parameters()).dtype, "cpu")
    shifts = []
    real_shift = cache._shift
    cache._shift = lambda d: (shifts.append((d, len(cache.active))), real_shift(d))
    got, last, arrive = {0: [], 1: [], 2: []}, {}, {0: 0, 1: 20, 2: 34}
    rows = {}
    for step in range(80):
        for r, t in arrive.items():
            if t == step:
                T = inputs[r].embeds.shape[1]
                row = cache.free_row()
                logits = cache.prefill(row, inputs[r], T + 30, cache.plan(T, T + 30))
                rows[row], last[row] = r, int(logits.argmax(-1))
                got[r].append(last[row])
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
    assert any(d < 0 and busy for d, busy in shifts)  # the left shift happened with a row in flight


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


def test_image_features_batched_and_cached(pipe, monkeypatch):
    # the e2e branch declares per_image_pixels on PaliGemmaProcessor; set it here until then
    monkeypatch.setattr(pipe.processor, "per_image_pixels", True, raising=False)
    calls = []
    real = pipe.model.encode_images
    monkeypatch.setattr(pipe.model, "encode_images", lambda px: (calls.append(px.shape[0]), real(px))[1])
    sched = Scheduler(pipe, max_batch=4, max_len=200)
    sched.open()
    cfg = SamplingConfig(max_new_tokens=5)
    runs = [_request(pipe, i, cfg) for i in (0, 1, 0)]
    for req, _ in runs:
        sched.submit(req)
    _drain(sched)
    assert calls == [2]  # one batch, the repeated image encoded once
    monkeypatch.undo()
    for (req, events), i in zip(runs, (0, 1, 0)):
        assert _tokens(events) == pipe.generate(PROMPTS[i], _image(i), cfg).token_ids


def test_same_length_prompts_prefill_together_into_scattered_rows(pipe, monkeypatch):
    """Prompts of one length admitted in one iteration share one prefill forward, also into rows
    that are not next to each other (scratch buffers, then copied); each equals its lone run."""
    sched = Scheduler(pipe, max_batch=4, max_len=200)
    sched.open()
    sizes = []
    real = sched.cache.prefill_rows
    monkeypatch.setattr(sched.cache, "prefill_rows", lambda rows, *a: (sizes.append(list(rows)), real(rows, *a))[1])
    long, short = SamplingConfig(max_new_tokens=20), SamplingConfig(max_new_tokens=2)
    runs = [_request(pipe, i, cfg) + (i, cfg) for i, cfg in ((1, short), (0, long), (3, long))]
    for req, *_ in runs:
        sched.submit(req)
    sched.iterate()
    while sched.active_rows == 3:
        sched.iterate()
    assert sorted(sched.cache.active) == [1, 2]  # the short request's row 0 is free again
    later = [_request(pipe, i, long) + (i, long) for i in (2, 5)]  # one prompt, two images
    for req, *_ in later:
        sched.submit(req)
    _drain(sched)
    assert sizes == [[0], [1, 2], [0, 3]]  # 1 alone, then 0 and 3 together; the later two into rows 0, 3
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
