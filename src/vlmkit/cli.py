"""The `vlmkit` command line: thin subcommands over typed library functions.

Every user error is a `VlmkitError`: printed as one line `vlmkit: error: ...`, exit code 2.
"""

import argparse
import json
import sys
from pathlib import Path

from vlmkit.errors import VlmkitError

TASKS = ("raw", "caption", "cap", "describe", "answer", "question", "ocr", "detect", "segment")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt about one or more images",
                       description="Generate text for images with a PaliGemma-family model.")
    p.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    p.add_argument("--image", action="append", default=[], help="image path (repeat for several images)")
    p.add_argument("--video", help="video file, animated GIF/WebP or folder of frames: frames are sampled "
                   "with a fixed stride and each becomes an image, in order (after any --image)")
    p.add_argument("--max-frames", type=int, default=16, help="most frames taken from --video (default 16)")
    p.add_argument("--frame-stride", type=int, help="take every k-th frame (default: spread over the clip)")
    p.add_argument("--prompt", help="raw prompt text (task 'raw'); for other tasks it is built for you")
    p.add_argument("--task", choices=TASKS, default="raw", help="PaLI task (default: raw prompt)")
    p.add_argument("--lang", default="en", help="language code for caption/answer/question tasks")
    p.add_argument("--question", help="question for --task answer")
    p.add_argument("--answer", help="answer for --task question")
    p.add_argument("--objects", help="objects for detect/segment, separated by ';'")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mask-vae", help="PaliGemma mask VQ-VAE weights (.npz) to decode segment masks")
    p.add_argument("--draw", help="write boxes/masks over the first image to this PNG")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the text")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from vlmkit.errors import ConfigError
    from vlmkit.generation import SamplingConfig
    from vlmkit.pipeline import load
    from vlmkit.tasks.run import run_task

    if args.task == "raw" and not args.prompt:
        raise ConfigError("--prompt is required unless --task is given")
    images = list(args.image)
    if args.video:
        from vlmkit.data.video import sample_frames

        images += sample_frames(args.video, max_frames=args.max_frames, stride=args.frame_stride)
    if not images:
        raise ConfigError("give at least one --image or a --video")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    pipe = load(args.model, dtype=args.dtype, device=args.device)
    on_token = (lambda e: print(e.text, end="", flush=True)) if args.stream and not args.json else None
    objects = [o.strip() for o in args.objects.split(";")] if args.objects else None
    out = run_task(pipe, args.task, images, prompt=args.prompt, lang=args.lang, question=args.question,
                   answer=args.answer, objects=objects, sampling=sampling, mask_vae_path=args.mask_vae,
                   on_token=on_token)
    if args.draw:
        from vlmkit.tasks.draw import draw_results

        draw_results(out.image, out.boxes, out.masks, out_path=args.draw)
        out.json["draw"] = args.draw
    if args.json:
        print(json.dumps(out.json, indent=2))
    elif on_token is not None:
        print()
    else:
        print(out.json["text"])
        for b in out.json["boxes"]:
            print(f"  {b['label']}: ({b['x1']:.0f}, {b['y1']:.0f}) - ({b['x2']:.0f}, {b['y2']:.0f})")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter counts")
    p.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    p.add_argument("--json", action="store_true")
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


def _add_create(sub) -> None:
    p = sub.add_parser("create", help="write a randomly initialised checkpoint folder (with tokenizer)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--preset", default="debug", help="PaliGemma preset (default: debug)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_create)


def cmd_create(args) -> int:
    from vlmkit.errors import ConfigError
    from vlmkit.models.paligemma.config import PRESETS
    from vlmkit.weights.create import create_checkpoint

    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    print(create_checkpoint(args.out, args.preset, args.seed))
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
    p = sub.add_parser("experiment", help="run a named experiment (objectives: contrastive vs captioning vs CoCa)")
    add_experiment_arguments(p)
    p.set_defaults(func=run_experiment_args)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="render a synthetic dataset of shapes, colours and words")
    s.add_argument("out", help="output folder")
    s.add_argument("--num-scenes", type=int, default=1000)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shards", action="store_true", help="write webdataset-style tar shards")
    s.set_defaults(func=cmd_data_synth)


def cmd_data_synth(args) -> int:
    from vlmkit.data.synth import SynthConfig, write_dataset

    cfg = SynthConfig(image_size=args.image_size, seed=args.seed)
    print(write_dataset(Path(args.out), args.num_scenes, cfg, shards=args.shards))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmkit", description="Exact, fast, readable vision-language models.")
    from vlmkit import __version__

    parser.add_argument("--version", action="version", version=f"vlmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_generate, _add_info, _add_create, _add_data, _add_eval_demo, _add_optional):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train"], ["train-contrastive"]):
        # Training takes free-form `--key.value` config overrides next to its named flags.
        args, extra = parser.parse_known_args(argv)
        args.overrides = extra
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VlmkitError as e:
        msg = " ".join(str(e).split())
        print(f"vlmkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
