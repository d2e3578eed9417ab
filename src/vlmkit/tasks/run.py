"""Run one PaLI task (or a raw prompt, or a chat) end to end: prompt -> generation -> structured,
JSON-ready result.

JSON schema (all tasks): {"task", "prompt", "num_images", "text", "token_ids", "finish_reason", "timing",
"boxes": [{"label", "x1", "y1", "x2", "y2", "score"?}], "masks": [...], "errors": [...]}.
A chat (`run_chat`) is task "chat"; its "prompt" is the conversation as the chat template renders it.
Boxes are in pixels of the first (original) image. For `segment`, each entry of "masks" is
{"label", "codes", "area"} (mask area in pixels when a mask VAE is given, else null).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.data.image import load_image
from vlmkit.data.video import Video
from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig
from vlmkit.tasks.parsing import clean_text, parse_detections, parse_segmentations
from vlmkit.tasks.prompts import Task, build_prompt


@dataclass
class TaskOutput:
    json: dict
    image: object  # the first image (PIL), for drawing
    boxes: list = field(default_factory=list)
    masks: list | None = None


def _box_json(b) -> dict:
    d = {"label": b.label, "x1": round(b.x1, 2), "y1": round(b.y1, 2), "x2": round(b.x2, 2), "y2": round(b.y2, 2)}
    if b.score is not None:
        d["score"] = b.score
    return d


def _load_inputs(images: list) -> list:
    """RGB PIL images; a `Video` (frames already sampled, for a model that takes videos) as it is."""
    return [i if isinstance(i, Video) else load_image(i) for i in images]


def run_task(pipe, task: str, images: list, *, prompt: str | None = None, lang: str = "en",
             question: str | None = None, answer: str | None = None, objects=None,
             sampling: SamplingConfig | None = None, mask_vae_path: str | Path | None = None,
             on_token=None) -> TaskOutput:
    """Build the prompt for `task` (or use `prompt` for task "raw"), generate and parse."""
    text_prompt = task_prompt(pipe, task, prompt=prompt, lang=lang, question=question, answer=answer,
                              objects=objects)
    pil = _load_inputs(images)
    result = pipe.generate(text_prompt, pil, sampling, on_token=on_token)
    return task_output(task, text_prompt, pil, result, mask_vae_path)


def task_prompt(pipe, task: str, *, prompt: str | None = None, lang: str = "en", question: str | None = None,
                answer: str | None = None, objects=None) -> str:
    """The text prompt of `task` (`prompt` itself for task "raw").

    PaLI task prompts are PaliGemma's (its processor places the image tokens itself); a processor
    whose prompts carry image placeholders (`placeholder`, e.g. LLaVA's `<image>`) takes raw prompts.
    """
    placeholder = getattr(getattr(pipe, "processor", None), "placeholder", None)  # `pipe` needs only generate()
    if task != "raw" and placeholder is not None:
        raise ConfigError(f"--task {task} builds a PaliGemma (PaLI) prompt, but this model's prompts hold "
                          f"{placeholder} placeholders; give --prompt or --chat instead")
    if task == "raw":
        return prompt or ""
    return build_prompt(task, lang=lang, question=question, answer=answer, objects=objects)


def task_output(task: str, text_prompt: str, pil: list, result, mask_vae_path: str | Path | None = None) -> TaskOutput:
    """Parse one generation `result` for `task` (boxes, masks) into a TaskOutput; `pil` are its
    images (boxes are in pixels of the first)."""
    w, h = pil[0].size
    out = _result_json(task, text_prompt, len(pil), result)
    boxes, masks = [], None
    if task == Task.DETECT.value:
        parsed = parse_detections(result.text, w, h)
        boxes, out["errors"] = parsed.boxes, parsed.errors
    elif task == Task.SEGMENT.value:
        parsed = parse_segmentations(result.text, w, h)
        boxes, out["errors"] = [o.box for o in parsed.objects], parsed.errors
        masks = _masks(parsed.objects, boxes, w, h, mask_vae_path)
        out["masks"] = [
            {"label": o.box.label, "codes": list(o.codes) if o.codes else None,
             "area": None if masks is None or masks[i] is None else int(masks[i].sum())}
            for i, o in enumerate(parsed.objects)
        ]
    out["boxes"] = [_box_json(b) for b in boxes]
    return TaskOutput(out, pil[0], boxes, masks)


def _result_json(task: str, prompt: str, num_images: int, result) -> dict:
    return {"task": task, "prompt": prompt, "num_images": num_images, "text": clean_text(result.text),
            "token_ids": result.token_ids, "finish_reason": result.finish_reason, "timing": result.timing,
            "boxes": [], "masks": [], "errors": []}


def run_chat(pipe, messages: list[dict], images: list, *, sampling: SamplingConfig | None = None,
             on_token=None) -> TaskOutput:
    """Answer a conversation with the checkpoint's chat template; `images` fill its image parts."""
    pil = _load_inputs(images)
    prompt = pipe.chat_template.render(messages, add_generation_prompt=True)
    result = pipe.chat(messages, pil, sampling, on_token=on_token)
    return TaskOutput(_result_json("chat", prompt, len(pil), result), pil[0] if pil else None)


def _masks(objects, boxes, w, h, mask_vae_path):
    if mask_vae_path is None:
        return None
    from vlmkit.tasks.segmentation import MaskVAE, decode_object_masks

    vae = MaskVAE.from_npz(mask_vae_path)
    return decode_object_masks(vae, [o.codes for o in objects], boxes, w, h)


def print_bundled_notice(pipe) -> None:
    """Tell the user, once, on stderr, when `pipe` runs a bundled model: it only knows its synthetic
    world, so answers about real photos are noise. Commands call it after their run worked, so a
    bad input's error stays the only line on stderr."""
    from vlmkit.weights.registry import bundled_models

    folder = getattr(pipe, "folder", None)  # None: a pipeline built in memory, never bundled
    if folder is None:
        return
    names = [name for name, f in bundled_models().items() if Path(folder).resolve() == f.resolve()]
    if names:
        print(f"vlmkit: note: {names[0]} is a tiny bundled model that only knows its synthetic world (shapes, "
              "colours, words; see `vlmkit data synth`); for real images pass --model DIR with a Hugging Face "
              "checkpoint folder (e.g. a PaliGemma or LLaVA download)", file=sys.stderr)
