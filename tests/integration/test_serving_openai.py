"""`vlmkit serve` through the official `openai` Python client: a real uvicorn server on 127.0.0.1
(a free port, in a background thread) serving the bundled model; plain, streamed, n, stop, the
vlmkit task extension, errors as the client's exception classes, the model list."""

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

import vlmkit  # noqa: E402
from tests.integration.serving_common import image, serving, uri  # noqa: E402
from vlmkit.generation import SamplingConfig  # noqa: E402
from vlmkit.serving.app import ServeConfig  # noqa: E402
from vlmkit.serving.inputs import task_output  # noqa: E402


@pytest.fixture(scope="module")
def openai_server():
    """The base URL of a server on the bundled model (float32), any API key accepted."""
    with serving(vlmkit.load(dtype="float32"), ServeConfig(max_batch=4, max_len=256)) as url:
        yield url


@pytest.fixture(scope="module")
def client(openai_server):
    return openai.OpenAI(base_url=openai_server, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref():
    """A separate copy for the lone reference answers (the server's scheduler owns its pipeline)."""
    return vlmkit.load(dtype="float32")


def _circle():
    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse((12, 16, 44, 48), fill="blue")
    return img


def _ask(client, text="caption en", url=None, **kw):
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url or uri()}}]
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return client.chat.completions.create(model="vlmkit", messages=[{"role": "user", "content": content}], **kw)


def test_plain_completion_equals_pipeline(client, ref):
    out = _ask(client)
    alone = ref.generate("caption en", image(), SamplingConfig(max_new_tokens=8))
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == alone.text and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens == len(alone.token_ids)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_deltas_equal_plain_text(client):
    plain = _ask(client).choices[0]
    chunks = list(_ask(client, stream=True))
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert text == plain.message.content and finishes == [plain.finish_reason]


def test_n_and_stop(client):
    out = _ask(client, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    text = out.choices[0].message.content
    assert out.choices[1].message.content == text  # greedy: both choices equal
    stop = text[2:4]
    stopped = _ask(client, stop=[stop]).choices[0]
    assert stopped.message.content == text[:text.index(stop)] and stopped.finish_reason == "stop"


def test_detect_extension_returns_boxes(client):
    task = {"vlmkit": {"task": "detect", "objects": ["circle"]}}
    out = _ask(client, "", url=uri(_circle()), max_tokens=12, extra_body=task)
    parsed = out.choices[0].message.model_extra["vlmkit"]
    assert parsed["task"] == "detect" and isinstance(parsed["boxes"], list)
    assert parsed == task_output("detect", out.choices[0].message.content, (64, 64))
    assert parsed["boxes"], out.choices[0].message.content  # the bundled model finds the circle
    for box in parsed["boxes"]:  # pixels of the 64 x 64 request image
        assert box["label"] == "circle" and 0 <= box["x1"] < box["x2"] <= 64 and 0 <= box["y1"] < box["y2"] <= 64


@pytest.mark.parametrize("content, words", [
    ("caption en", "has no image"),
    ([{"type": "text", "text": "caption en"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}], "image"),
    ([{"type": "text", "text": "caption en"},
      {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}], "not an image"),
])
def test_bad_requests_are_bad_request_errors(client, content, words):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="vlmkit", messages=[{"role": "user", "content": content}], max_tokens=4)
    assert err.value.status_code == 400 and words in err.value.message
    assert client.models.list().data  # still serving


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["vlmkit"] and models.data[0].object == "model"


def test_wrong_api_key_is_authentication_error():
    with serving(vlmkit.load(dtype="float32"), ServeConfig(api_key="sekrit", max_batch=2, max_len=256)) as url:
        wrong = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            wrong.models.list()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            _ask(wrong)
        right = openai.OpenAI(base_url=url, api_key="sekrit", max_retries=0)
        assert [m.id for m in right.models.list().data] == ["vlmkit"]
