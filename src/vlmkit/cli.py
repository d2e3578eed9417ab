"""The `vlmkit` command line: thin subcommands over typed library functions.

Flags are checked when parsed (`vlmkit.cli_types`); every command runs inside one error boundary
(`vlmkit.cli_errors`): a user error is one line `vlmkit: error: ...` and exit code 2, a bug keeps
its traceback. Commands that write a folder or file refuse to overwrite anything unless `--force`.
"""

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

from vlmkit import cli_types as T
from vlmkit.cli_errors import run_command

TASKS = ("raw", "caption", "cap", "describe", "answer", "question", "ocr", "detect", "segment")


MODEL_HELP = "checkpoint folder, bundled model name or Hub name org/name[@revision] (default: the bundled model)"


def add_task_flags(p) -> None:
    """--task and the flags its prompt is built from (`generate`, `predict`)."""
    p.add_argument("--task", choices=TASKS, default="raw", help="PaLI task (default: raw prompt)")
    p.add_argument("--lang", type=T.text, default="en", help="language code for caption/answer/question tasks")
    p.add_argument("--question", type=T.text, help="question for --task answer")
    p.add_argument("--answer", type=T.text, help="answer for --task question")
    p.add_argument("--objects", type=T.text, help="objects for detect/segment, separated by ';'")


def task_flags(args) -> dict:
    """The keyword arguments of `vlmkit.tasks.run.task_prompt` from the `add_task_flags` flags."""
    objects = [o.strip() for o in args.objects.split(";")] if args.objects else None
    return {"prompt": args.prompt, "lang": args.lang, "question": args.question, "answer": args.answer,
            "objects": objects}


def add_sampling_flags(p) -> None:
    p.add_argument("--max-new-tokens", type=T.positive_int, default=64, help="most tokens to generate (default 64)")
    p.add_argument("--temperature", type=T.temperature, default=0.0,
                   help=f"sampling temperature >= 0 (default 0 = greedy; values below {T.GREEDY_BELOW:g} are greedy too)")
    p.add_argument("--top-p", type=T.top_p, help="nucleus sampling: keep the most likely tokens up to this mass, in (0, 1]")
    p.add_argument("--top-k", type=T.top_k, help="sample among the k most likely tokens (0 = no limit)")
    p.add_argument("--seed", type=T.seed, help="sampling seed in [0, 2**64 - 1] (default: unseeded)")


def sampling_flags(args):
    """The SamplingConfig of the `add_sampling_flags` flags."""
    from vlmkit.generation import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt about one or more images",
                       description="Generate text for images with a model of any registered vlm family.")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--image", action="append", default=[], help="image path (repeat for several images)")
    p.add_argument("--video", help="video file, animated GIF/WebP or folder of frames: frames are sampled "
                   "with a fixed stride and each becomes an image, in order (after any --image)")
    p.add_argument("--max-frames", type=T.positive_int, default=16, help="most frames taken from --video (default 16)")
    p.add_argument("--frame-stride", type=T.positive_int, help="take every k-th frame (default: spread over the clip)")
    p.add_argument("--prompt", type=T.text, help="the prompt as the family's processor takes it (a LLaVA prompt holds "
                   "one <image> per image); for a --task other than raw it is built for you")
    p.add_argument("--chat", action="append", type=T.text, help="a chat turn (repeat: user, assistant, ..., user); "
                   "rendered with the checkpoint's chat template, the images open the first turn")
    p.add_argument("--messages", help="JSON file of chat messages (OpenAI / transformers format); its image parts "
                   "name their files, or --image fills them in order")
    add_task_flags(p)
    add_sampling_flags(p)
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    T.add_speed_flags(p)
    p.add_argument("--mask-vae", help="PaliGemma mask VQ-VAE weights (.npz) to decode segment masks")
    p.add_argument("--draw", help="write boxes/masks over the first image to this PNG (an existing file needs --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --draw file")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the text")
    p.add_argument("--verbose", action="store_true", help="say on stderr how inputs were adjusted (an image resized "
                   "down to the model's pixel budget), one line each")
    p.set_defaults(func=cmd_generate)


def _conversation(args) -> tuple[list[dict] | None, list]:
    """(--messages' messages or None, the images they name), the prompt / chat flags checked."""
    from vlmkit.data.conversation import read_messages
    from vlmkit.errors import ConfigError

    if not (args.chat or args.messages):
        if args.task == "raw" and not args.prompt:
            raise ConfigError("--prompt is required unless --task, --chat or --messages is given")
        return None, []
    if args.chat and args.messages:
        raise ConfigError("give --chat or --messages, not both")
    if args.prompt or args.task != "raw":
        raise ConfigError("--chat / --messages replace --prompt and --task; give one of them")
    if args.draw:
        raise ConfigError("--draw draws the boxes of a detect / segment --task; a chat has none")
    if args.chat:
        return None, []
    messages, named = read_messages(args.messages)
    if named and (args.image or args.video):
        raise ConfigError(f"{args.messages} names its images; give no --image / --video with it")
    return messages, named


def cmd_generate(args) -> int:
    from vlmkit.data.conversation import chat_turns
    from vlmkit.data.processors.native import show_notes
    from vlmkit.errors import ConfigError
    from vlmkit.outputs import check_output_file
    from vlmkit.pipeline import load
    from vlmkit.tasks.run import print_bundled_notice, run_chat, run_task

    show_notes(args.verbose)
    messages, images = _conversation(args)
    if args.draw:
        check_output_file(args.draw, args.force)  # before the model runs, not after
    images += list(args.image)
    if not images and not args.video and messages is None and not args.chat:
        raise ConfigError("give at least one --image or a --video")
    sampling = sampling_flags(args)
    pipe = load(args.model, dtype=args.dtype, device=args.device, **T.speed_kwargs(args))
    if args.video:  # one video where the model's processor takes videos, else one image per frame
        from vlmkit.data.video import FrameRule, model_inputs

        rule = FrameRule.of(args.max_frames, pipe.processor, name="--max-frames")  # a multiple of its temporal patch
        images += model_inputs(pipe.processor, rule.sample(args.video, args.frame_stride))
    if args.chat:  # one image part per image (or video / sampled frame) opens the first turn
        messages = chat_turns(args.chat, len(images))
    on_token = (lambda e: print(e.text, end="", flush=True)) if args.stream and not args.json else None
    if messages is not None:
        out = run_chat(pipe, messages, images, sampling=sampling, on_token=on_token)
    else:
        out = run_task(pipe, args.task, images, **task_flags(args), sampling=sampling, mask_vae_path=args.mask_vae,
                       on_token=on_token)
    _print_generated(args, out, streamed=on_token is not None)
    # Last: an error stays the only stderr line, and a streamed line is finished before the note.
    print_bundled_notice(pipe)
    return 0


def _print_generated(args, out, streamed: bool) -> None:
    if args.draw:
        from vlmkit.outputs import atomic_write_bytes
        from vlmkit.tasks.draw import draw_results

        png = io.BytesIO()
        draw_results(out.image, out.boxes, out.masks).save(png, format="PNG")
        atomic_write_bytes(args.draw, png.getvalue(), overwrite=args.force)  # never a half-written PNG
        out.json["draw"] = args.draw
    if args.json:
        print(compact_json(out.json))
        return
    print("" if streamed else out.json["text"])  # a streamed text is on screen already
    for b in out.json["boxes"]:
        print(f"  {b['label']}: ({b['x1']:.0f}, {b['y1']:.0f}) - ({b['x2']:.0f}, {b['y2']:.0f})")


# A JSON array of numbers that `indent` spread over lines: "[\n  1,\n  2\n]". JSON strings hold no raw
# newline, so this matches only arrays, never text inside a string.
_NUMBER_ARRAY = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def compact_json(obj) -> str:
    """`json.dumps(obj, indent=2)` with every list of numbers (token ids, mask codes) on one line."""
    return _NUMBER_ARRAY.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", json.dumps(obj, indent=2))


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from vlmkit.weights.info import model_info

    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>22}: {v}")
    return 0


# `create --help`'s epilog; filled from the registry only when help is printed, because listing the
# families imports every family module (about a second) and other commands must not pay for it.
_PRESETS_EPILOG = "families and presets"


class _CreateHelp(argparse.RawDescriptionHelpFormatter):
    def add_text(self, text):
        super().add_text(_presets_epilog() if text is _PRESETS_EPILOG else text)


def _presets_epilog() -> str:
    """One wrapped line per registered family: `name (kind): preset, preset, ...`."""
    import textwrap

    from vlmkit.models.registry import families

    lines = [textwrap.fill(f"{f.name} ({f.kind}): {', '.join(f.presets)}", width=100, initial_indent="  ",
                           subsequent_indent="      ", break_on_hyphens=False) for f in families()]
    return "\n".join([f"{_PRESETS_EPILOG} (--family NAME --preset PRESET):", *lines])


def _add_create(sub) -> None:
    p = sub.add_parser("create", help="write a randomly initialised checkpoint folder (with tokenizer)",
                       epilog=_PRESETS_EPILOG, formatter_class=_CreateHelp)
    p.add_argument("out", help="folder to write (must be absent or empty unless --force)")
    p.add_argument("--family", default="paligemma",
                   help="model family, as registered in vlmkit.models.registry (default: paligemma; listed below)")
    p.add_argument("--preset", default="debug", help="preset of the family (default: debug; listed below)")
    p.add_argument("--seed", type=T.seed, default=0, help="weight initialisation seed (default 0)")
    p.add_argument("--force", action="store_true", help=T.FORCE_HELP)
    p.set_defaults(func=cmd_create)


def cmd_create(args) -> int:
    from vlmkit.models.registry import get_family
    from vlmkit.outputs import check_output_dir
    from vlmkit.weights.create import create_checkpoint

    get_family(args.family).preset(args.preset)  # unknown family / preset: one line, nothing written
    check_output_dir(args.out, args.force)
    print(create_checkpoint(args.out, args.preset, args.seed, family=args.family, overwrite=args.force))
    return 0


def _add_eval_demo(sub) -> None:
    from vlmkit.demo import add_demo_arguments, run_demo_args
    from vlmkit.eval.cli import add_eval_arguments, run_eval_args

    p = sub.add_parser("eval", help="evaluate a model on a manifest (caption, vqa, detect, ocr)")
    add_eval_arguments(p)
    p.set_defaults(func=run_eval_args)
    p = sub.add_parser("demo", help="run every task on fresh synthetic scenes; write an HTML page")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_args)


def _add_serve(sub) -> None:
    from vlmkit.serving.cli import add_serve_arguments, run_serve_args

    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI-style chat completions and a web page",
                       description="An OpenAI-compatible server with continuous batching (needs the [serve] extra).")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve_args)


def _add_two_tower(sub) -> None:
    from vlmkit.two_tower_cli import add_parser

    add_parser(sub)


def _add_predict(sub) -> None:
    from vlmkit.predict import add_parser

    add_parser(sub)


def _add_quantize(sub) -> None:
    from vlmkit.quantize_cli import add_parser

    add_parser(sub)


def _add_optional(sub) -> None:
    """Subcommands whose modules may be absent in a trimmed install."""
    try:
        from vlmkit.training.cli import add_train_arguments, run_train_args
    except ImportError:
        return
    from vlmkit.experiments.objectives import add_experiment_arguments, run_experiment_args
    from vlmkit.training.recipes.contrastive import add_contrastive_arguments, run_contrastive_args

    p = sub.add_parser("train", help="train or fine-tune PaliGemma with a recipe (see `vlmkit train --help`)",
                       epilog="Any other --key.value VALUE overrides the recipe's TrainConfig.")
    add_train_arguments(p)
    p.set_defaults(func=run_train_args)
    p = sub.add_parser("train-contrastive", help="train SigLIP / CLIP two-towers or CoCa",
                       epilog="Any other --key.value VALUE overrides the recipe's config.")
    add_contrastive_arguments(p)
    p.set_defaults(func=run_contrastive_args)
    p = sub.add_parser("experiment", help="run a named experiment (objectives: contrastive vs captioning vs "
                       "CoCa; curation: SigLIP on raw vs curated data)")
    add_experiment_arguments(p)
    p.set_defaults(func=run_experiment_args)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="render a synthetic dataset of shapes, colours and words")
    s.add_argument("out", help="output folder (must be absent or empty unless --force)")
    s.add_argument("--num-scenes", type=T.positive_int, default=1000, help="scenes to render (default 1000)")
    s.add_argument("--image-size", type=T.image_size, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=T.seed, default=0, help="scene seed; use another for a held-out split")
    s.add_argument("--shards", action="store_true", help="write webdataset-style tar shards")
    s.add_argument("--force", action="store_true", help=T.FORCE_HELP)
    s.set_defaults(func=cmd_data_synth)
    from vlmkit.curation.cli import add_parser as add_curate

    add_curate(dsub)


def cmd_data_synth(args) -> int:
    from vlmkit.data.synth import SynthConfig, write_dataset
    from vlmkit.outputs import check_output_dir

    check_output_dir(args.out, args.force)
    cfg = SynthConfig(image_size=args.image_size, seed=args.seed)
    print(write_dataset(Path(args.out), args.num_scenes, cfg, shards=args.shards, overwrite=args.force))
    return 0


def build_parser() -> T.Parser:
    parser = T.Parser(prog="vlmkit", description="Exact, fast, readable vision-language models.")
    from vlmkit import __version__

    parser.add_argument("--version", action="version", version=f"vlmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=T.Parser)
    for add in (_add_generate, _add_info, _add_create, _add_data, _add_eval_demo, _add_serve, _add_predict,
                _add_two_tower, _add_quantize, _add_optional):
        add(sub)
    return parser


def _parse_and_run(argv: list[str]) -> int:
    parser = build_parser()
    if argv[:1] in (["train"], ["train-contrastive"]):
        # Training takes free-form `--key.value` config overrides next to its named flags.
        args, extra = parser.parse_known_args(argv)
        args.overrides = extra
    else:
        args = parser.parse_args(argv)
    return args.func(args)


def _reserve_std_fds() -> None:
    """If the shell closed fd 0/1/2 (`>&-`), hold them on /dev/null: otherwise the next file we open
    would get fd 1 and stray prints from C libraries would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one


def main(argv: list[str] | None = None) -> int:
    _reserve_std_fds()
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(lambda: _parse_and_run(argv))


if __name__ == "__main__":
    sys.exit(main())
