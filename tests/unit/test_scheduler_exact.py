"""Continuous batching in bfloat16 equals each request served alone, bit for bit.

bf16 is where it can break: SDPA's CPU kernel sums a row's attention weights over vector lanes
fixed by the key slot (and the last `span % 16` keys in a scalar loop with another exp), and
grouped prefills run the linear layers at another batch size, so a row whose keys sit at another
offset or span, or a prompt prefilled with others, gets other bits; in bf16 one bit is one bf16
step, which a greedy near-tie turns into another token. The bundled model, many requests with
different prompt lengths and budgets admitted at staggered steps into fewer rows than requests:
every step's logits (not only the tokens) must equal `Pipeline.run` alone.
"""

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig
from vlmkit.generation.batching import window_limit
from vlmkit.generation.quantize_packed import packed_int8_available
from vlmkit.serving.scheduler import Request, Scheduler

PROMPTS = ["caption en", "detect circle ; square", "answer en what colour is it?", "ocr",
           "segment square", "answer en how many shapes are there in this picture?"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange"]
ARRIVALS = [0, 0, 0, 1, 3, 4, 4, 6, 9, 10, 10, 10, 13, 17, 18, 22, 23, 23, 30, 31]  # decode step of each arrival


@pytest.fixture(scope="module", params=["bfloat16", "bfloat16+prepack", "int8-dyn+prepack"])
def pipe(request):
    """bf16 plain, bf16 with blocked-layout projections, and W8A8 with oneDNN's packed int8 layers
    (integer sums with per-row scales: equal at any row count by construction, checked here)."""
    if "prepack" in request.param and not packed_int8_available(torch.device("cpu")):
        pytest.skip("no oneDNN here")
    quantize = "int8-dyn" if request.param.startswith("int8") else None
    return vlmkit.load(dtype="bfloat16", quantize=quantize, prepack="prepack" in request.param)


def _image(i):
    img = Image.new("RGB", (64, 64), COLOURS[i % len(COLOURS)])
    x = 5 * i % 40
    img.paste("white" if i % 2 else "gray", (x, 8 + i % 13, x + 20, 30 + i % 17))
    return img


def _batch(pipe, i):
    return pipe.processor([PROMPTS[i % len(PROMPTS)]], [[_image(i)]], padding_side="left")


def _sampling(i):
    return SamplingConfig(max_new_tokens=8 + 7 * i % 33)


@torch.inference_mode()
def test_bf16_rows_admitted_at_staggered_steps_equal_lone_runs_bit_for_bit(pipe):
    alone = [pipe.run(_batch(pipe, i), _sampling(i), output_logits=True)[0] for i in range(len(ARRIVALS))]
    assert len({len(_batch(pipe, i)["input_ids"][0]) for i in range(len(PROMPTS))}) >= 4  # prompt lengths differ
    sched = Scheduler(pipe, max_batch=6, max_len=256)
    sched.open()
    logits: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(ARRIVALS))}
    events: dict[int, list] = {i: [] for i in range(len(ARRIVALS))}
    owner = {}  # id(request) -> its index
    real_take = sched._take_token

    def take(seq, lg, greedy=None):  # every token's logits [1, V], as the scheduler samples them
        logits[owner[id(seq.req)]].append(lg[0].float())
        real_take(seq, lg, greedy)

    sched._take_token = take
    step = 0
    while step <= ARRIVALS[-1] or sched.active_rows or sched._waiting:
        for i in [i for i, t in enumerate(ARRIVALS) if t == step]:
            req = Request(_batch(pipe, i), _sampling(i), events[i].append)
            owner[id(req)] = i
            sched.submit(req)
        sched.iterate()
        step += 1
    sched.stop()
    tokens_differ, logits_differ = [], []
    for i, want in enumerate(alone):
        got = [e.token_id for e in events[i] if e.token_id is not None]
        if (got, events[i][-1].finish) != (want.token_ids, want.finish_reason):
            tokens_differ.append(i)
        steps = torch.stack(logits[i])  # [steps, V]
        if steps.shape != want.logits.shape or not torch.equal(steps, want.logits):
            logits_differ.append(i)
    assert (tokens_differ, logits_differ) == ([], [])


def test_window_limit_keeps_sliding_windows_out_of_reach():
    """A decode step's query index is the span's last slot for every row, so a sliding window
    must never bite: the server's cache is capped at the smallest window (rounded down to
    whole spans), and a window shorter than one span is refused."""
    from dataclasses import replace

    from vlmkit.models.common.decoder import Decoder
    from vlmkit.models.gemma.config import PRESETS

    assert window_limit(Decoder(PRESETS["debug"])) > 1 << 40  # no window: no limit
    assert window_limit(Decoder(replace(PRESETS["debug-gemma2"], sliding_window=200))) == 192
    with pytest.raises(ConfigError, match="sliding windows of at least 16"):
        window_limit(Decoder(PRESETS["debug-gemma2"]))  # window 8
