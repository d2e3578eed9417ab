"""Request bodies of the OpenAI-compatible API (pydantic), with vlmkit's `vlmkit` extension.

Unknown top-level fields are ignored (clients send fields this server does not use, e.g.
`frequency_penalty`); wrong types or out-of-range values are 422 errors naming the field.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageURL(BaseModel):
    url: str = Field(description="a data URI (data:image/png;base64,...) or, with --allow-local-files, a path")
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[Part]


class TaskRequest(BaseModel):
    """vlmkit extension: run a PaLI task (its prompt is built from these fields and its output is
    parsed into boxes / masks, in pixels of the request's first image)."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["caption", "cap", "describe", "answer", "question", "ocr", "detect", "segment"]
    objects: list[str] | None = None
    lang: str = "en"
    question: str | None = None
    answer: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    vlmkit: TaskRequest | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)
