"""Continuous batching: iteration-level scheduling (Orca, OSDI'22; vLLM) over one `BatchedCache`.

One thread owns the model. Between two decode steps it admits waiting requests into free cache
rows (image features cached by image hash; each prompt prefilled alone into its own row, a
request with n choices prefilled once and copied into n rows), then decodes every active row by
one token, hands each row's new text to its request, and frees a row at EOS, a stop string, max
tokens, cancellation or its timeout. A greedy row produces what the request produces alone
(`Pipeline.generate`), in bf16 bit for bit: every op sees the row as the lone run does (same key
slots and span rounding, see generation/batching.py; images encoded and prompts prefilled one per
forward, the lone run's shapes), except where a linear layer's kernel rounds a row differently
at the decode step's batch size than at batch 1 (measured limits in generation/batching.py).

Where the time goes (benchmarks/bench_serve.py, bundled model, 32 clients, ~25 rows per step):
more than half of it is admission, i.e. image encoding and prefill, which are compute paid per
request whatever the batch; the rest is decode steps, whose per-row Python (token choice,
detokenisation, handing events to the HTTP thread) is kept small: one argmax for all greedy
rows, one event-loop wake-up per step (`streams.Mailbox`).

Requests arrive from other threads (`submit`, `cancel`); results leave through each request's
`emit` callback, called on the scheduler thread.
"""

import logging
import threading
import time
from collections import deque

import torch

from vlmkit.errors import VlmkitError
from vlmkit.generation.batching import BatchedCache, window_limit
from vlmkit.generation.generate import _Row  # the generate loop's own EOS / stop-string rule
from vlmkit.generation.sampling import sample_next
from vlmkit.models.registry import family_of
from vlmkit.serving.requests import Event, QueueFullError, Request, RequestTimeoutError, Seq, choice_generator

__all__ = ["Event", "QueueFullError", "Request", "RequestTimeoutError", "Scheduler"]


log = logging.getLogger("vlmkit.serving")


class Scheduler:
    """The batching thread over `pipe` (a `vlmkit.Pipeline`: .model, .tokenizer, .processor).

    max_batch: cache rows (concurrent choices); max_len: cache slots per row (prompt + max new
    tokens of one request must fit); max_queue: waiting requests before `submit` refuses.
    """

    def __init__(self, pipe, max_batch: int = 16, max_len: int = 2048, max_queue: int = 256,
                 metrics=None, feature_cache_size: int = 64):
        self.pipe, self.max_batch, self.max_queue, self.metrics = pipe, max_batch, max_queue, metrics
        model = pipe.model
        self.adapter = family_of(model).generation
        self.max_len = min(max_len, self.adapter.context_length(model), window_limit(self.adapter.decoder(model)))
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.stop_ids = {pipe.tokenizer.eos_id}
        # Image features come from the pipeline's cache (`Pipeline.image_features`), at least this big.
        pipe.feature_cache_size = max(pipe.feature_cache_size, feature_cache_size)
        self._waiting: deque[Request] = deque()
        self._seqs: dict[int, Seq] = {}  # row -> sequence
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.cache: BatchedCache | None = None
        self.steps = 0  # decode steps run (tests and metrics)

    # --- other threads -------------------------------------------------------------------------
    def open(self) -> None:
        """Allocate the batched cache (`start` does it; tests drive `iterate` by hand after it)."""
        self.cache = BatchedCache(self.adapter.decoder(self.pipe.model), self.max_batch, self.max_len,
                                  self.dtype, self.device)

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._loop, name="vlmkit-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish every admitted and waiting request, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def submit(self, req: Request) -> None:
        if req.n > self.max_batch:
            raise VlmkitError(f"n={req.n} is more than the server's --max-batch {self.max_batch}")
        need = req.prompt_tokens + req.sampling.max_new_tokens
        if need > self.max_len:
            raise VlmkitError(f"prompt of {req.prompt_tokens} tokens (with image tokens) + max_tokens "
                              f"{req.sampling.max_new_tokens} exceeds the server's {self.max_len} cache slots")
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests)")
            self._waiting.append(req)
            self._set_queue_depth()
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Drop `req` (its rows are freed before the next decode step)."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    @property
    def active_rows(self) -> int:
        return len(self._seqs)

    # --- the scheduler thread ------------------------------------------------------------------
    def _set_queue_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._waiting))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._seqs or self._stopping):
                    self._cv.wait()
                if self._stopping and not (self._waiting or self._seqs):
                    return
            self.iterate()

    @torch.inference_mode()
    def iterate(self) -> None:
        """One scheduling iteration: admit what fits, drop cancelled rows, decode one step."""
        with self._cv:
            admitted = self._take_admissible()
        t0 = time.perf_counter()
        try:
            self._admit(admitted)
        except Exception as exc:  # noqa: BLE001 - a failing request must not stop the server
            log.exception("admitting %d request(s) failed", len(admitted))
            for req in admitted:
                self._fail(req, exc)
        if admitted and self.metrics is not None:
            self.metrics.admit_seconds.observe(time.perf_counter() - t0)
        self._drop_cancelled()
        self._expire()
        if self._seqs:
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - fail what is in flight, keep serving
                log.exception("decode step failed")
                for req in {id(s.req): s.req for s in self._seqs.values()}.values():
                    self._fail(req, exc)

    def _take_admissible(self) -> list[Request]:
        """Waiting requests (FIFO) that fit in the free rows now; cancelled ones are dropped."""
        free, now = self.max_batch - len(self._seqs), time.perf_counter()
        out = []
        for req in [r for r in self._waiting if r.expired(now)]:  # timed out while waiting
            self._waiting.remove(req)
            self._end(req, Event(0, error=self._timeout_error(req)))
        while self._waiting and (self._waiting[0].cancelled or self._waiting[0].n <= free):
            req = self._waiting.popleft()
            if req.cancelled:
                self._end(req, Event(0, finish="cancelled"))
                continue
            out.append(req)
            free -= req.n
        self._set_queue_depth()
        return out

    def _end(self, req: Request, event: Event) -> None:
        """Send a last event (a choice's finish, or a whole request's error or early cancel), counted by reason."""
        if self.metrics is not None:
            timeout = isinstance(event.error, RequestTimeoutError)
            self.metrics.finished.labels(event.finish or ("timeout" if timeout else "error")).inc()
        req.send(event)

    def _fail(self, req: Request, exc: Exception) -> None:
        for seq in [s for s in self._seqs.values() if s.req is req]:
            self._release(seq)
        self._end(req, Event(0, error=exc))

    def _release(self, seq: Seq) -> None:
        self._seqs.pop(seq.row, None)
        self.cache.free(seq.row)

    @staticmethod
    def _timeout_error(req: Request) -> RequestTimeoutError:
        return RequestTimeoutError(f"the request took more than the server's --request-timeout of {req.timeout:g} s "
                                   f"({time.perf_counter() - req.submitted:.2f} s since it arrived)")

    def _expire(self) -> None:
        """End every admitted request that passed its timeout (all its choices), freeing its rows."""
        now = time.perf_counter()
        for req in {id(s.req): s.req for s in self._seqs.values() if s.req.expired(now)}.values():
            self._fail(req, self._timeout_error(req))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._seqs.values() if s.req.cancelled]:
            self._release(seq)
            self._end(seq.req, Event(seq.index, finish="cancelled", completion_tokens=seq.acc.steps))

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in batch.items()}

    def _encode_images(self, reqs: list[Request]) -> None:
        """Replace each request's pixels by image features from `Pipeline.image_features`: cached by
        a hash of the pixels, each new image encoded alone as in a lone run (a batch of M images
        runs the tower's linear layers at another batch size, whose bf16 kernels may round
        otherwise). Only for a processor whose pixel_values[i] is the i-th image alone
        (`per_image_pixels`); otherwise the family's adapter encodes the pixels at prefill."""
        per_image = getattr(self.pipe.processor, "per_image_pixels", False)
        for req in reqs:
            px = req.batch.pop("pixel_values", None) if per_image else None
            req.batch = self._to_device(req.batch)
            if px is not None and len(px):
                req.batch["image_features"] = self.pipe.image_features(px)  # [m, N, D]

    def _admit(self, reqs: list[Request]) -> None:
        """Prefill the admitted requests (`_take_admissible` counted their rows), one prompt per
        forward: a lone run's shapes, so its kernels (two prompts in one forward would run the
        linear layers at batch 2T, which bf16 kernels may round otherwise)."""
        self._encode_images(reqs)
        for req in reqs:
            if req.cancelled:
                self._end(req, Event(0, finish="cancelled"))
                continue
            try:
                inputs = self.adapter.prepare(self.pipe.model, req.batch)
                row = self.cache.free_row()
                logits = self.cache.prefill(row, inputs, req.prompt_tokens + req.sampling.max_new_tokens)
            except (VlmkitError, ValueError) as exc:
                self._fail(req, exc)
                continue
            self._start(req, row, logits[None])
            if self.metrics is not None:
                self.metrics.first_token(time.perf_counter() - req.submitted)

    def _start(self, req: Request, row: int, logits: torch.Tensor) -> None:
        """The request's n choices: row `row` (prefilled) and copies of it; each takes its first token."""
        cfg = req.sampling
        rows = [row]
        for _ in range(1, req.n):
            rows.append(self.cache.free_row())
            self.cache.copy_row(row, rows[-1])
        stop_ids = self.stop_ids | set(cfg.extra_eos_ids)
        for i, r in enumerate(rows):
            seq = Seq(req, i, r, _Row(self.pipe.tokenizer, stop_ids, cfg.stop_strings),
                       choice_generator(cfg.seed, i, self.device))
            self._seqs[r] = seq
            self._take_token(seq, logits)

    def _take_token(self, seq: Seq, logits: torch.Tensor, greedy: int | None = None) -> None:
        """Sample the sequence's next token from logits [1, V] (a greedy row: `greedy`, its argmax
        if the caller has it already), stream it, end the row if done."""
        cfg = seq.req.sampling
        seq.last = greedy if greedy is not None and cfg.greedy else int(sample_next(logits, cfg, seq.gen)[0])
        seq.acc.add(seq.last)
        if self.metrics is not None:
            self.metrics.generation_tokens.inc()
        done = seq.acc.finish or seq.acc.steps >= cfg.max_new_tokens
        # Text that may still become the start of a stop string is held back until it cannot.
        hold = 0 if done else max((len(s) - 1 for s in cfg.stop_strings), default=0)
        upto = max(seq.sent, len(seq.acc.text) - hold)
        if seq.acc.finish != "eos":
            seq.req.send(Event(seq.index, seq.acc.text[seq.sent:upto], seq.last))
        elif upto > seq.sent:
            seq.req.send(Event(seq.index, seq.acc.text[seq.sent:upto]))
        seq.sent = upto
        if done:
            self._release(seq)
            self._end(seq.req, Event(seq.index, finish=seq.acc.finish or "length", completion_tokens=seq.acc.steps))

    def _step(self) -> None:
        t0 = time.perf_counter()
        tokens = {row: seq.last for row, seq in sorted(self._seqs.items())}
        logits = self.cache.decode(tokens)  # [len(tokens), V]
        argmax = logits.argmax(dim=-1).tolist()  # every greedy row's token in one op (sample_next's rule)
        for i, row in enumerate(tokens):
            self._take_token(self._seqs[row], logits[i:i + 1], argmax[i])
        self.steps += 1
        if self.metrics is not None:
            self.metrics.step(len(tokens), time.perf_counter() - t0)
