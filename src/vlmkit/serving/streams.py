"""One chat completion in flight: the scheduler's events, as a JSON response or as server-sent
events (OpenAI's `chat.completion.chunk` objects, then `data: [DONE]`). A client that goes away
cancels the request, which frees its cache rows before the next decode step."""

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable

from vlmkit.errors import VlmkitError
from vlmkit.serving.inputs import APIError
from vlmkit.serving.scheduler import Event, Request, RequestTimeoutError, Scheduler

FINISH = {"eos": "stop", "stop_string": "stop", "length": "length", "cancelled": "cancelled"}
POLL_S = 0.5  # how often a waiting response checks that its client is still there


class Mailbox:
    """Hands events from the scheduler thread to asyncio queues of one event loop, waking the loop
    once per burst: a decode step emits one event per row, and a wake-up per event (each a
    `call_soon_threadsafe`: a write to the loop's self-pipe, then the loop thread taking the GIL
    from the scheduler) made the step several times slower at 25 rows."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.items: list[tuple[asyncio.Queue, Event]] = []

    def put(self, queue: asyncio.Queue, event: Event) -> None:
        """Called on the scheduler thread; raises RuntimeError once the loop is closed (also
        when a wake-up scheduled before it closed never ran)."""
        if self.loop.is_closed():
            with self.lock:
                self.items.clear()
            raise RuntimeError("the event loop of this request is closed")
        with self.lock:
            self.items.append((queue, event))
            if len(self.items) > 1:  # a wake-up is scheduled already and has not run yet
                return
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            with self.lock:
                self.items.clear()
            raise

    def _drain(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, event in items:
            queue.put_nowait(event)


def api_error(err: Exception) -> APIError:
    """The HTTP error for a request that failed in the scheduler."""
    if isinstance(err, RequestTimeoutError):
        return APIError(504, str(err), kind="timeout_error", code="request_timeout")
    if isinstance(err, (VlmkitError, ValueError)):
        return APIError(400, f"generation failed: {err}")
    return APIError(500, f"generation failed: {err}", kind="server_error")


class Completion:
    def __init__(self, req: Request, queue: asyncio.Queue, scheduler: Scheduler):
        self.req, self.queue, self.scheduler = req, queue, scheduler
        self.texts = [""] * req.n
        self.finish: list[str | None] = [None] * req.n
        self.tokens = [0] * req.n

    def usage(self) -> dict:
        p, c = self.req.prompt_tokens, sum(self.tokens)
        return {"prompt_tokens": p * self.req.n, "completion_tokens": c, "total_tokens": p * self.req.n + c}

    async def events(self, http_request) -> AsyncIterator[Event]:
        """The request's events until every choice has finished; cancels it if the client leaves
        (or the consumer stops early)."""
        checked = float("-inf")  # check at the first event, then every POLL_S
        try:
            while any(f is None for f in self.finish):
                try:
                    event = await asyncio.wait_for(self.queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() - checked >= POLL_S or event is None:
                    checked = time.monotonic()
                    if await http_request.is_disconnected():
                        return
                if event is None:
                    continue
                if event.error is not None:
                    raise api_error(event.error)
                if event.finish == "cancelled" and event.completion_tokens == 0 and self.req.cancelled:
                    return
                self.texts[event.index] += event.text
                if event.finish is not None:
                    self.finish[event.index] = event.finish
                    self.tokens[event.index] = event.completion_tokens
                yield event
        finally:
            if any(f is None for f in self.finish):
                self.scheduler.cancel(self.req)
            if self.scheduler.metrics is not None:
                self.scheduler.metrics.latency_seconds.observe(time.perf_counter() - self.req.submitted)

    async def json(self, meta: dict, http_request, parse: Callable | None) -> dict:
        async for _ in self.events(http_request):
            pass
        choices = []
        for i, text in enumerate(self.texts):
            message = {"role": "assistant", "content": text}
            if parse is not None:  # in a worker thread: mask decoding and PNG writing take a while
                message["vlmkit"] = await asyncio.to_thread(parse, text)
            choices.append({"index": i, "message": message, "finish_reason": FINISH.get(self.finish[i])})
        return {**meta, "object": "chat.completion", "choices": choices, "usage": self.usage()}

    async def sse(self, meta: dict, http_request, parse: Callable | None, usage: bool) -> AsyncIterator[str]:
        def chunk(choices, **extra) -> str:
            return f"data: {json.dumps({**meta, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for i in range(self.req.n)])
        try:
            async for e in self.events(http_request):
                if e.finish is None:
                    if e.text:
                        yield chunk([{"index": e.index, "delta": {"content": e.text}, "finish_reason": None}])
                    continue
                choice = {"index": e.index, "delta": {}, "finish_reason": FINISH.get(e.finish)}
                if parse is not None:
                    choice["vlmkit"] = await asyncio.to_thread(parse, self.texts[e.index])
                yield chunk([choice])
        except APIError as exc:  # the status line is sent already: the error travels as an event
            yield f"data: {json.dumps(exc.body())}\n\n"
        if usage:
            yield chunk([], usage=self.usage())
        yield "data: [DONE]\n\n"
