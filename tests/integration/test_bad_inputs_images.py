"""Bad-input corpus, part 1: images, video frames and prompts given to `vlmkit generate`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.bad_inputs_common import debug_model, image, png_header, run_bad  # noqa: F401


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _make(kind: str, tmp_path: Path) -> Path:
    """Write the bad image `kind` under tmp_path and return its path."""
    path = tmp_path / "bad.png"
    if kind == "missing":
        return tmp_path / "nope.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        path.write_bytes(_valid_png()[:60])
    elif kind == "text_named_png":
        path.write_text("this is not an image\n")
    elif kind == "png_signature_only":
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    elif kind == "bomb_declared":  # 100k x 100k: over twice PIL's limit (DecompressionBombError)
        path.write_bytes(png_header(100_000, 100_000))
    elif kind == "bomb_warning":  # 10k x 10k: between PIL's limit and twice it (only a warning in PIL)
        path.write_bytes(png_header(10_000, 10_000))
    elif kind == "over_max_pixels":  # 9k x 9k: under PIL's limit, over ours (8192^2)
        path.write_bytes(png_header(9_000, 9_000))
    elif kind == "zero_width":
        path.write_bytes(png_header(0, 10))
    elif kind == "oversize_sparse":  # 300 MiB declared, no disk used: refused before any read
        with open(path, "wb") as f:
            f.truncate(300 << 20)
    elif kind == "garbage_jpeg":
        path = tmp_path / "bad.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "unreadable":
        path.write_bytes(_valid_png())
        path.chmod(0)
    return path


IMAGE_CASES = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "is empty",
    "truncated_png": "truncated or corrupt",
    "text_named_png": "not an image",
    "png_signature_only": "not an image",
    "bomb_declared": "too large",
    "bomb_warning": "too large",
    "over_max_pixels": "too large",
    "zero_width": "not an image",
    "oversize_sparse": "too large",
    "garbage_jpeg": "bad.jpg",
    "unreadable": "permission denied",
    "fifo": "not a regular file",
    "dev_zero": "not a regular file",
}


@pytest.mark.parametrize("kind", sorted(IMAGE_CASES))
def test_bad_image(kind, debug_model, tmp_path, capsys):
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop reads")
    if kind == "dev_zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero on this system")
    path = Path("/dev/zero") if kind == "dev_zero" else _make(kind, tmp_path)
    run_bad(capsys, ["generate", "--model", debug_model, "--image", path, "--prompt", "caption en",
                     "--max-new-tokens", "2"], IMAGE_CASES[kind], tmp_path, debug_model)


def test_second_image_bad(debug_model, image, tmp_path, capsys):
    """One good image and one missing one: the missing one is named."""
    run_bad(capsys, ["generate", "--model", debug_model, "--image", image, "--image", tmp_path / "gone.png",
                     "--prompt", "x"], "gone.png", tmp_path, debug_model)


VIDEO_CASES = {
    "missing": "not found",
    "empty_folder": "no image frames",
    "corrupt_frame": "frame",
    "text_as_gif": "bad.gif",
}


@pytest.mark.parametrize("kind", sorted(VIDEO_CASES))
def test_bad_video(kind, debug_model, tmp_path, capsys):
    src = tmp_path / "clip"
    if kind == "empty_folder":
        src.mkdir()
    elif kind == "corrupt_frame":
        src.mkdir()
        (src / "f0.png").write_bytes(b"\x89PNG broken")
    elif kind == "text_as_gif":
        src = tmp_path / "bad.gif"
        src.write_text("GIF? no")
    run_bad(capsys, ["generate", "--model", debug_model, "--video", src, "--task", "caption",
                     "--max-new-tokens", "2"], VIDEO_CASES[kind], tmp_path, debug_model)


PROMPT_CASES = {
    "invalid_utf8": (["--prompt", "caption \udcff"], "not valid utf-8"),
    "lone_surrogate_question": (["--task", "answer", "--question", "\udc80?"], "not valid utf-8"),
    "invalid_utf8_objects": (["--task", "detect", "--objects", "cat;\udcfe"], "not valid utf-8"),
    "empty": (["--prompt", ""], "--prompt is required"),
    "none": ([], "--prompt is required"),
    "too_long": (["--prompt", "word " * 9000], "max_length"),
    "image_token_in_text": (["--prompt", "look <image> here"], "<image>"),
    "answer_without_question": (["--task", "answer"], "question"),
    "detect_without_objects": (["--task", "detect"], "objects"),
    "object_with_markup": (["--task", "detect", "--objects", "c<a>t"], "must not contain"),
    "no_image": (["--prompt", "x"], "at least one --image"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_bad_prompt(case, debug_model, image, tmp_path, capsys):
    extra, cause = PROMPT_CASES[case]
    images = [] if case == "no_image" else ["--image", image]
    run_bad(capsys, ["generate", "--model", debug_model, *images, *extra, "--max-new-tokens", "2"],
            cause, tmp_path, debug_model)


MANIFESTS = {  # eval manifests: read and checked before the model loads
    "missing": (None, "does not exist"),
    "row_is_list": ("[1, 2]\n", "needs an object"),
    "not_json": ("{image: x}\n", "is not valid JSON"),
    "not_utf8": (b"\xff\xfe\n", ":1 is not UTF-8 text"),
    "bad_utf8_inside_a_string": (b'{"image": "x.png", "prefix": "\xff"}\n', ":1 is not UTF-8 text (byte 31)"),
    "binary_png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ":1 is not UTF-8 text (byte 1)"),
    "binary_control_bytes": (bytes(range(256)), ":1 is not valid JSON"),  # line 1 is bytes 0..9: ASCII
    "csv": ("image,prefix,suffix\nx.png,caption en,a cat\n", ":1 is not valid JSON (a manifest is JSON Lines"),
    "json_array_over_lines": ('[\n{"image": "x.png"}\n]\n', ":1 is not valid JSON"),
    "row_without_prefix": ('{"image": "x.png"}\n', "'prefix'"),
    "empty": ("", "has no rows"),
    "blank_lines_only": ("\n  \n\t\n", "has no rows (the file is empty or blank)"),
    "folder": ("FOLDER", "is a folder, not a manifest file; pass the .jsonl file itself"),
    "folder_of_a_synth_set": ("SYNTH_FOLDER", "is a folder, not a manifest file; did you mean"),
    "fifo": ("FIFO", "is not a regular file"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_bad_eval_manifest(case, debug_model, tmp_path, capsys):
    content, cause = MANIFESTS[case]
    path = tmp_path / "manifest.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "FIFO":
        os.mkfifo(path)  # would block a reader that opened it: refused before opening
    elif content in ("FOLDER", "SYNTH_FOLDER"):
        path = tmp_path / "set"
        path.mkdir()
        if content == "SYNTH_FOLDER":
            (path / "manifest.jsonl").write_text('{"image": "x.png", "prefix": "p", "suffix": "s"}\n')
            cause += f" {path / 'manifest.jsonl'}?"
    elif content is not None:
        path.write_text(content)
    run_bad(capsys, ["eval", "--model", debug_model, "--data", path, "--task", "vqa"], cause, tmp_path, debug_model)
