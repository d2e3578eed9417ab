"""What travels between the HTTP layer and the scheduler thread: requests, their events, errors."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vlmkit.errors import VlmkitError
from vlmkit.generation.generate import _Row
from vlmkit.generation.sampling import SamplingConfig

log = logging.getLogger("vlmkit.serving")


class QueueFullError(VlmkitError):
    """The scheduler's waiting queue is full (HTTP 429)."""


class RequestTimeoutError(VlmkitError):
    """A request passed its time limit (the server's --request-timeout); its rows are freed."""


@dataclass
class Event:
    """One choice's news: new text (`token_id` set), or its end (`finish` set), or an error."""

    index: int
    text: str = ""
    token_id: int | None = None
    finish: str | None = None  # "eos", "stop_string", "length", "cancelled"
    completion_tokens: int = 0
    error: Exception | None = None


@dataclass(eq=False)
class Request:
    """A processed prompt (batch of 1 as the family's processor makes it) and how to sample it.

    emit: called on the scheduler thread with every Event of every choice; if it raises (its
        client's event loop is gone), the request is cancelled.
    timeout: seconds from submission (waiting included) after which the request ends with a
        `RequestTimeoutError` event and its rows are freed; None: no limit.
    """

    batch: dict
    sampling: SamplingConfig
    emit: Callable[[Event], None]
    n: int = 1
    cancelled: bool = False
    timeout: float | None = None
    submitted: float = field(default_factory=time.perf_counter)

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.submitted > self.timeout

    @property
    def prompt_tokens(self) -> int:
        return int(self.batch["input_ids"].shape[1])

    def send(self, event: Event) -> None:
        try:
            self.emit(event)
        except Exception:  # noqa: BLE001 - a vanished client must not stop the scheduler
            log.warning("dropping a request whose receiver failed", exc_info=True)
            self.cancelled = True


@dataclass(eq=False)
class Seq:
    """One choice of a request in one cache row."""

    req: Request
    index: int
    row: int
    acc: _Row
    gen: torch.Generator | None
    last: int = 0  # the token chosen last (next decode step's input)
    sent: int = 0  # characters of acc.text handed to the request so far


def choice_generator(seed: int | None, index: int, device) -> torch.Generator | None:
    """Choice i of a seeded request samples with seed + i (so choice 0 equals a lone request)."""
    return None if seed is None else torch.Generator(device=device).manual_seed((seed + index) % 2**64)
