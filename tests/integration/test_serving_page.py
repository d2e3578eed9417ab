"""The web page of `vlmkit serve` driven in headless Chromium: Debian's `chromium` package launched
through Playwright with the system executable (no downloaded browser). A real uvicorn server on
127.0.0.1 serves the bundled model behind an API key; the page uploads a synthetic scene, runs
detect (boxes drawn over the image equal the server's boxes for the same request), streams a
caption, shows errors, draws masks, and never asks for anything but its own server."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402

import vlmkit  # noqa: E402
from vlmkit.data.synth import SynthConfig, generate_scene  # noqa: E402
from vlmkit.serving.app import PAGE, ServeConfig  # noqa: E402

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # CI installs it with the dev extra
    sync_playwright = None

CHROMIUM = shutil.which("chromium")
needs_browser = pytest.mark.skipif(
    sync_playwright is None or CHROMIUM is None,
    reason="playwright is not installed (pip install playwright==1.65.2, the dev extra)" if sync_playwright is None
    else "no chromium on PATH (Debian: apt-get install chromium)")
KEY = "page-key"
SCENE = (0, 3)  # SynthConfig(seed=0) scene 3 holds a green and a purple triangle
WAIT_MS = 120_000  # how long the page may take on a busy CPU before a wait fails


def test_page_references_no_remote_assets():
    """Offline: no absolute or protocol-relative URL anywhere, CSS url() only to in-page ids,
    fetch() only to this server's paths."""
    html = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}", html, re.I), "the page names a remote URL"
    assert "@import" not in html and re.findall(r"url\((?!#)", html) == []
    assert re.findall(r"fetch\(\s*[\"'`](?!/)", html) == [] and "fetch(" in html


@pytest.fixture(scope="module")
def base_url():
    """The server's origin (http://127.0.0.1:PORT), bundled model, every API call needs KEY."""
    from tests.integration.test_serving_openai import serving  # the uvicorn-in-a-thread helper

    with serving(vlmkit.load(dtype="float32"), ServeConfig(api_key=KEY, max_batch=2, max_len=256)) as url:
        yield url.removesuffix("/v1")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh page at `/`; afterwards, every URL it requested was its own server's or a data URI."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(base_url + "/")
    yield page
    context.close()
    assert urls and all(u.startswith((base_url + "/", "data:", "blob:")) for u in urls), urls


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(path of the scene's PNG, the scene) for the upload."""
    s = generate_scene(np.random.default_rng(list(SCENE)), SynthConfig(seed=SCENE[0]))
    path = tmp_path_factory.mktemp("page") / "scene.png"
    s.image.save(path)
    return path, s


def _upload(page, path: Path) -> None:
    page.fill("#key", KEY)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#stage:not(.hidden)")


def _drop(page, path: Path) -> None:
    """Drops the file on the drop zone as a browser would (a drop event carrying a DataTransfer)."""
    page.fill("#key", KEY)
    transfer = page.evaluate_handle("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)), dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "image/png"}));
        return dt; }""", [base64.b64encode(path.read_bytes()).decode(), path.name])
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    assert "over" in page.get_attribute("#drop", "class")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#stage:not(.hidden)")


def _run(page) -> dict:
    """Clicks Run, waits until the answer has finished; returns the request body the page sent."""
    with page.expect_request("**/v1/chat/completions") as req:
        page.click("#go")
    page.wait_for_selector('#answer[data-state="done"]')
    return req.value.post_data_json


def _reference(base_url: str, body: dict) -> dict:
    """The same request not streamed: the server's own message for it."""
    r = httpx.post(f"{base_url}/v1/chat/completions", json={**body, "stream": False},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]


def _drawn_boxes(page) -> list[dict]:
    return page.eval_on_selector_all("#overlay rect.box", """els => els.map(e => ({
        label: e.parentNode.dataset.label, x1: +e.getAttribute("x"), y1: +e.getAttribute("y"),
        x2: +e.getAttribute("x") + +e.getAttribute("width"), y2: +e.getAttribute("y") + +e.getAttribute("height")}))""")


@needs_browser
def test_detect_draws_the_servers_boxes(page, base_url, scene):
    path, s = scene
    _upload(page, path)
    page.select_option("#task", "detect")
    page.fill("#objects", "green triangle")
    sent = _run(page)
    assert sent["stream"] is True and sent["vlmkit"] == {"task": "detect", "objects": ["green triangle"]}
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == \
        "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    ref = _reference(base_url, sent)
    assert page.text_content("#answer") == ref["content"]
    boxes = _drawn_boxes(page)
    assert boxes and [b["label"] for b in boxes] == ["green triangle"] * len(boxes), ref["content"]
    assert boxes == [{k: v if k == "label" else pytest.approx(v) for k, v in b.items()} for b in ref["vlmkit"]["boxes"]]
    # on screen the box sits where its pixels are on the scaled image
    img, rect = page.locator("#image").bounding_box(), page.locator("#overlay rect.box").first.bounding_box()
    scale = img["width"] / s.image.width
    assert rect["x"] - img["x"] == pytest.approx(boxes[0]["x1"] * scale, abs=2)
    assert rect["width"] == pytest.approx((boxes[0]["x2"] - boxes[0]["x1"]) * scale, abs=3)


@needs_browser
def test_caption_streams_in(page, base_url, scene):
    _drop(page, scene[0])
    assert page.text_content("#info") == f"scene.png: {scene[1].image.width} x {scene[1].image.height} pixels"
    page.select_option("#task", "caption")
    assert page.is_hidden("#objects") and page.is_hidden("#question")
    # count the answer's text updates: a streamed answer arrives in several pieces
    page.evaluate("""() => { window.updates = 0; new MutationObserver(() => window.updates++)
        .observe(document.getElementById("answer"), {childList: true, characterData: true, subtree: true}); }""")
    sent = _run(page)
    assert sent["vlmkit"] == {"task": "caption"}
    ref = _reference(base_url, sent)
    text = page.text_content("#answer")
    assert text and text == ref["content"]
    assert page.evaluate("window.updates") > 2
    assert "completion tokens" in page.text_content("#usage")
    assert page.locator("#overlay > *").count() == 0 and page.text_content("#error") == ""


@needs_browser
def test_errors_are_shown(page, scene):
    page.select_option("#task", "detect")
    page.fill("#objects", "circle")
    page.click("#go")  # no image yet: the page says so and sends nothing
    page.wait_for_selector('#answer[data-state="error"]')
    assert "choose an image" in page.text_content("#error")

    _upload(page, scene[0])
    page.fill("#key", "wrong")
    page.click("#go")
    page.wait_for_selector('#answer[data-state="error"]')
    assert "API key" in page.text_content("#error") and page.locator("label.over #key").count() == 1

    page.fill("#key", KEY)
    page.select_option("#task", "raw")
    page.fill("#prompt", "")
    page.click("#go")  # the server's 400: its OpenAI-shaped message is shown as it is
    page.wait_for_selector('#answer[data-state="error"]')
    assert page.text_content("#error").startswith("messages: the last user message has no text")


def _mask_png(size: tuple[int, int], box: tuple[int, int, int, int]) -> str:
    """The server's mask contract: a grayscale PNG of the image's size, 255 inside."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _screenshot(page) -> Image.Image:
    return Image.open(io.BytesIO(page.locator("#stage").screenshot())).convert("RGB")


@needs_browser
def test_masks_are_drawn(page, scene):
    """A segment answer with one decoded mask (png) and one with codes only, served by a stand-in
    for the server (the page's side of the mask contract)."""
    path, s = scene
    _upload(page, path)
    inside = (8, 8, 24, 24)  # image pixels
    out = {"task": "segment", "errors": [],
           "boxes": [{"label": "a", "x1": 8, "y1": 8, "x2": 24, "y2": 24},
                     {"label": "b", "x1": 40, "y1": 40, "x2": 50, "y2": 50}],
           "masks": [{"label": "a", "codes": [1] * 16, "png": _mask_png(s.image.size, inside)},
                     {"label": "b", "codes": [2] * 16}]}
    chunks = [{"choices": [{"index": 0, "delta": {"content": "<seg001> a"}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "vlmkit": out}]}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=sse))
    before = _screenshot(page)
    page.select_option("#task", "segment")
    page.fill("#objects", "a ; b")
    _run(page)
    assert page.text_content("#answer") == "<seg001> a"
    assert page.locator("#overlay rect.mask").count() == 1
    assert page.get_attribute("#overlay mask image", "href") == out["masks"][0]["png"]
    assert "b: mask codes only (16)" in page.text_content("#boxes")
    after = _screenshot(page)
    scale = before.width / s.image.width
    centre = (int(16 * scale), int(18 * scale))  # inside the mask, below box a's label
    outside = (int(58 * scale), int(30 * scale))  # in neither mask nor box
    assert before.getpixel(centre) != after.getpixel(centre)
    assert before.getpixel(outside) == after.getpixel(outside)
