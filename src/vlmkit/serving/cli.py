"""`vlmkit serve`: flags (checked when parsed) and the command; FastAPI/uvicorn load only to run."""

import argparse
import signal
import threading
from pathlib import Path

from vlmkit import cli_types as T


def _port(text: str) -> int:
    value = T.positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1 .. 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path.resolve()


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return path.resolve()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", type=T.text, help="require `Authorization: Bearer KEY` on every endpoint but "
                   "/health and the page (default: no key)")
    p.add_argument("--max-batch", type=T.positive_int, default=16,
                   help="rows of the batched KV cache: choices decoded together (default 16)")
    p.add_argument("--max-len", type=T.positive_int, default=2048,
                   help="cache slots per row: prompt (with image tokens) + max_tokens must fit (default 2048)")
    p.add_argument("--max-queue", type=T.positive_int, default=256,
                   help="requests waiting for a row before new ones get HTTP 429 (default 256)")
    p.add_argument("--request-timeout", type=_seconds, metavar="S",
                   help="end a request S seconds after it arrived (waiting included) with an HTTP 504 "
                   "timeout_error, freeing its rows (default: no limit)")
    p.add_argument("--mask-vae", type=_file, metavar="FILE.npz",
                   help="PaliGemma's mask VQ-VAE weights: segment answers (the vlmkit task extension) get "
                   "each mask as a PNG of the first image's size (default: codes only)")
    p.add_argument("--allow-local-files", type=_folder, metavar="DIR",
                   help="let image_url name files under DIR (default: data URIs only)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    # No --compile: the scheduler's decode steps change shape (rows and slot span) every step.
    T.add_speed_flags(p, compile_flag=False)


def run_serve_args(args) -> int:
    try:
        import uvicorn

        from vlmkit.serving.app import ServeConfig, create_app
        from vlmkit.serving.inputs import Limits
    except ImportError as exc:
        from vlmkit.errors import ConfigError

        raise ConfigError(f"vlmkit serve needs the [serve] extra: pip install 'vlmkit[serve]' ({exc.name} "
                          "is missing)") from None
    from vlmkit.pipeline import load

    pipe = load(args.model, dtype=args.dtype, device=args.device, **T.speed_kwargs(args))
    name = args.model or (pipe.folder.name if pipe.folder is not None else "vlmkit")
    cfg = ServeConfig(model_name=name, api_key=args.api_key, max_batch=args.max_batch, max_len=args.max_len,
                      max_queue=args.max_queue, request_timeout=args.request_timeout, mask_vae=args.mask_vae,
                      limits=Limits(allow_local_files=args.allow_local_files))
    # uvicorn finishes the in-flight requests on SIGTERM (its lifespan then drains the scheduler)
    # and re-raises the signal to the handler it found: this one, so that a clean stop exits 0.
    main = threading.current_thread() is threading.main_thread()  # signals are set in the main thread only
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main else None
    try:
        uvicorn.run(create_app(pipe, cfg), host=args.host, port=args.port, log_level="info")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)
