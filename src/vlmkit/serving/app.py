"""The HTTP layer: an OpenAI-compatible chat-completions API over the continuous-batching scheduler.

Endpoints: POST /v1/chat/completions (plain or streamed as server-sent events ending with
`data: [DONE]`), GET /v1/models, GET /health, GET /metrics (Prometheus), GET / (the web page).
With an API key every endpoint but /health and the page itself needs `Authorization: Bearer KEY`.
Errors are OpenAI's JSON shape: 400 bad request, 401 bad key, 413 too large, 422 invalid field,
429 queue full, 504 past the server's --request-timeout (a streamed response, whose status is
sent already, ends with the error as its last event before `[DONE]`). Prompt rules (PaliGemma: the last user message's text) are in `serving.inputs`.
"""

import asyncio
import hmac
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from vlmkit.errors import VlmkitError
from vlmkit.generation import SamplingConfig
from vlmkit.serving.inputs import APIError, Limits, chat_messages, prompt_text, request_images, task_output
from vlmkit.serving.metrics import Metrics
from vlmkit.serving.scheduler import QueueFullError, Scheduler
from vlmkit.serving.scheduler import Request as GenRequest
from vlmkit.serving.schemas import ChatRequest
from vlmkit.serving.streams import Completion, Mailbox

PAGE = Path(__file__).parent / "static" / "index.html"
OPEN_PATHS = ("/health", "/", "/favicon.ico")


@dataclass(kw_only=True)
class ServeConfig:
    model_name: str = "vlmkit"
    api_key: str | None = None
    max_batch: int = 16
    max_len: int = 2048
    max_queue: int = 256
    default_max_tokens: int = 64
    request_timeout: float | None = None  # seconds from arrival; None: no limit
    mask_vae: Path | None = None  # PaliGemma's mask VQ-VAE (.npz): segment answers get mask PNGs
    limits: Limits = field(default_factory=Limits)


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _where(loc) -> str:
    """A field path (messages.0.content) without pydantic's union-branch names (str, list[...])."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p == "str" or "[" in p))]
    return ".".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1])  # a part's tag, then its field


def _validation_error(_, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors() or [{}]
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _error(APIError(400, f"the request body is not valid JSON ({first.get('msg', '')})"))
    if not _where(first.get("loc", ())) and first.get("type") == "missing":
        return _error(APIError(400, "the request body is missing: send a JSON object"))
    # A union field (content: a string or a list of parts) reports one error per branch: the
    # deepest ones name what is wrong (e.g. the image_url inside a part), same-depth ones are joined.
    depth = max(len(e.get("loc", ())) for e in errors)
    deepest = [e for e in errors if len(e.get("loc", ())) == depth]
    loc = _where(deepest[0].get("loc", ()))
    msgs = " or ".join(dict.fromkeys(e.get("msg", "invalid value") for e in deepest))
    return _error(APIError(422, f"{loc or 'body'}: {msgs}", loc or None))


class Server:
    """The app's state: pipeline, scheduler, metrics, config; builds each request's generation."""

    def __init__(self, pipe, cfg: ServeConfig):
        self.pipe, self.cfg, self.metrics = pipe, cfg, Metrics()
        self.scheduler = Scheduler(pipe, cfg.max_batch, cfg.max_len, cfg.max_queue, self.metrics)
        self._template = None
        self._mailboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> Mailbox
        self.mask_vae = None
        if cfg.mask_vae is not None:
            from vlmkit.tasks.segmentation import MaskVAE

            self.mask_vae = MaskVAE.from_npz(cfg.mask_vae)  # CheckpointError names a bad file

    def processed(self, body: ChatRequest) -> tuple[dict, tuple[int, int] | None]:
        """(the processor's batch of one prompt, the first image's size); runs in a worker thread."""
        images = request_images(body, self.cfg.limits)
        size = images[0].size if images else None
        proc = self.pipe.processor
        if body.vlmkit is None and hasattr(proc, "chat"):
            if self._template is None:
                from vlmkit.data.chat_template import load_chat_template

                self._template = load_chat_template(self.pipe.folder)
            return proc.chat(self._template, chat_messages(body), images), size
        prompt = prompt_text(body)
        if len(prompt) > self.cfg.limits.max_prompt_chars:
            raise APIError(400, f"messages: prompt of {len(prompt):,} characters, more than "
                           f"{self.cfg.limits.max_prompt_chars:,}", "messages")
        return proc([prompt], [images], padding_side="left"), size

    def sampling(self, body: ChatRequest) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=body.max_completion_tokens or body.max_tokens
                              or self.cfg.default_max_tokens, temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, stop_strings=body.stop_strings())

    async def submit(self, body: ChatRequest) -> tuple[Completion, tuple[int, int] | None]:
        try:
            batch, size = await run_in_threadpool(self.processed, body)
            sampling = self.sampling(body)
        except VlmkitError as exc:
            raise APIError(400, str(exc)) from None
        loop = asyncio.get_running_loop()
        if loop not in self._mailboxes:
            self._mailboxes[loop] = Mailbox(loop)
        mailbox, queue = self._mailboxes[loop], asyncio.Queue()
        req = GenRequest(batch, sampling, lambda e: mailbox.put(queue, e), n=body.n, timeout=self.cfg.request_timeout)
        try:
            self.scheduler.submit(req)
        except QueueFullError as exc:
            raise APIError(429, str(exc), kind="rate_limit_error") from None
        except VlmkitError as exc:
            raise APIError(400, str(exc)) from None
        self.metrics.prompt_tokens.inc(req.prompt_tokens * body.n)
        return Completion(req, queue, self.scheduler), size


def _middleware(server: Server):
    async def guard(request: Request, call_next):
        path = request.url.path
        key, limits = server.cfg.api_key, server.cfg.limits
        given = request.headers.get("authorization", "").encode()
        if key is not None and path not in OPEN_PATHS and not hmac.compare_digest(given, f"Bearer {key}".encode()):
            response = _error(APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                       kind="authentication_error", code="invalid_api_key"))
        elif int(request.headers.get("content-length") or 0) > limits.max_body_bytes:
            response = _error(APIError(413, f"request body larger than {limits.max_body_bytes:,} bytes"))
        else:
            response = await call_next(request)
        endpoint = path if path in ("/v1/chat/completions", "/v1/models", "/health", "/metrics", "/") else "other"
        server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response
    return guard


def create_app(pipe, cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving `pipe` (a `vlmkit.Pipeline`); its lifespan runs the scheduler."""
    server = Server(pipe, cfg or ServeConfig())

    @asynccontextmanager
    async def lifespan(_):
        server.scheduler.start()
        try:
            yield
        finally:  # uvicorn's SIGTERM: in-flight requests finish, then the scheduler drains
            await run_in_threadpool(server.scheduler.stop)

    app = FastAPI(title="vlmkit", lifespan=lifespan)
    app.state.server = server
    app.middleware("http")(_middleware(server))
    app.add_exception_handler(APIError, lambda _, exc: _error(exc))
    app.add_exception_handler(RequestValidationError, _validation_error)
    _routes(app, server)
    return app


def _routes(app: FastAPI, server: Server) -> None:
    @app.get("/health")
    def health():
        return {"status": "ok", "active_rows": server.scheduler.active_rows}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": server.cfg.model_name, "object": "model",
                                            "created": 0, "owned_by": "vlmkit"}]}

    @app.get("/metrics")
    def metrics():
        server.metrics.active_rows.set(server.scheduler.active_rows)
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        """OpenAI chat completions. Images: `image_url` parts with data URIs (local paths only under
        the server's --allow-local-files). The prompt: families with a chat template render the
        conversation with it; PaliGemma has none, so its prompt is the last user message's text
        (earlier turns are ignored) and its images are every image of the request, in order.
        `vlmkit: {"task": "detect", "objects": [...]}` builds a PaLI task prompt instead and adds
        the parsed boxes (pixels of the first image) / segment codes as `message.vlmkit`; with the
        server's --mask-vae each mask also has `png`, a grayscale PNG data URI of the first
        image's size (255 inside the mask, 0 outside)."""
        completion, size = await server.submit(body)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.cfg.model_name}
        task = body.vlmkit.task if body.vlmkit else None
        parse = (lambda text: task_output(task, text, size, server.mask_vae)) if task and size else None
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(completion.sse(meta, request, parse, usage), media_type="text/event-stream")
        return await completion.json(meta, request, parse)
