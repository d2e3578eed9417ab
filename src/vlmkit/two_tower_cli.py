"""`vlmkit embed`, `vlmkit classify` and `vlmkit retrieve`: image-text models (SigLIP, CLIP-style,
CoCa) from the command line, thin over `vlmkit.two_tower.TwoTower`.

    vlmkit embed --model runs/siglip/export --images photos/ --out photos.npy   # + photos.json (inputs)
    vlmkit classify --model M --image cat.jpg --labels "cat,dog,bird"
    vlmkit retrieve --model M --images photos/ --query "a red circle" --top-k 5

Inputs and outputs are checked before the model loads; outputs are written atomically and an
existing one is kept unless --force.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from vlmkit import cli_types as T
from vlmkit.errors import ConfigError, DataError
from vlmkit.outputs import atomic_write_bytes, check_output_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder: str | Path, flag: str = "--images") -> list[Path]:
    """The image files directly inside `folder`, sorted by name; DataError naming the flag otherwise."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{flag} {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{flag} {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{flag} {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_files(files: list[str], flag: str = "--image") -> None:
    """DataError naming the first of `files` that is not an existing file."""
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"{flag} {f} does not exist" if not Path(f).exists() else f"{flag} {f} is not a file")


def read_lines(path: str | Path, flag: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file (stripped), DataError naming the flag otherwise."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{flag} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"{flag} {path} has no non-blank lines")
    return lines


def parse_labels(value: str) -> list[str]:
    """--labels: "cat,dog,bird" or a file with one label per line."""
    if Path(value).is_file():
        return read_lines(value, "--labels")
    labels = [v.strip() for v in value.split(",")]
    if not any(labels) or not all(labels):
        raise ConfigError(f"--labels {value!r} needs comma-separated, non-empty class names, e.g. \"cat,dog\"")
    return labels


def parse_templates(values: list[str] | None) -> list[str]:
    """--templates: each a template with '{}' or a file of them (one a line); default CLIP's."""
    from vlmkit.two_tower import DEFAULT_TEMPLATES

    out = []
    for v in values or []:
        out += read_lines(v, "--templates") if Path(v).is_file() else [v]
    if any("{}" not in t for t in out):
        raise ConfigError("every --templates value needs a '{}' for the class name, e.g. \"a photo of a {}.\"")
    return out or list(DEFAULT_TEMPLATES)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="siglip (SigLIP / CLIP-style), siglip2 (NaFlex) or coca checkpoint folder or name")
    p.add_argument("--batch-size", type=T.positive_int, default=32, help="images or texts per forward (default 32)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")


def _load(args):
    from vlmkit.two_tower import TwoTower

    tt = TwoTower.load(args.model, dtype=args.dtype, device=args.device)
    tt.batch_size = args.batch_size
    return tt


# --------------------------------------------------------------------------- embed


def _embed_inputs(args) -> tuple[str, list[str]]:
    """("image" | "text", the inputs in order) from the embed flags."""
    images = [*(str(p) for p in image_files(args.images)), *args.image] if args.images else list(args.image)
    texts = (read_lines(args.texts, "--texts") if args.texts else []) + list(args.text)
    if bool(images) == bool(texts):
        raise ConfigError("give images (--images DIR / --image F) or texts (--texts FILE / --text T), not both")
    check_files(images)
    return ("image", images) if images else ("text", texts)


def _embedding_bytes(out: Path, kind: str, inputs: list[str], emb: np.ndarray, model: str) -> dict[Path, bytes]:
    """File -> contents: X.npy (float32 [N, E]) + X.json (the inputs in order), or X.jsonl."""
    if out.suffix == ".jsonl":
        lines = [json.dumps({kind: x, "embedding": e.tolist()}, ensure_ascii=False) for x, e in zip(inputs, emb)]
        return {out: ("\n".join(lines) + "\n").encode("utf-8")}
    buf = io.BytesIO()
    np.save(buf, emb.astype(np.float32))
    meta = {"model": model, "kind": kind, "shape": list(emb.shape), "inputs": inputs}
    return {out: buf.getvalue(), sidecar(out): (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode()}


def sidecar(out: str | Path) -> Path:
    """Where the input list of an .npy output goes: X.npy -> X.json."""
    return Path(out).with_suffix(".json")


def cmd_embed(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".npy", ".jsonl"):
        raise ConfigError(f"--out {out} must end in .npy (array + .json list of inputs) or .jsonl")
    for path in [out, *([sidecar(out)] if out.suffix == ".npy" else [])]:
        check_output_file(path, args.force)  # before the model loads, not after
    kind, inputs = _embed_inputs(args)
    tt = _load(args)
    emb = (tt.embed_images(inputs) if kind == "image" else tt.embed_texts(inputs)).numpy()
    for path, data in _embedding_bytes(out, kind, inputs, emb, str(tt.folder)).items():
        atomic_write_bytes(path, data, overwrite=args.force)
    print(f"wrote {len(inputs)} {kind} embeddings of width {emb.shape[1]} to {out}")
    return 0


# --------------------------------------------------------------------------- classify / retrieve


def cmd_classify(args) -> int:
    labels, templates = parse_labels(args.labels), parse_templates(args.templates)
    check_files(args.image)
    tt = _load(args)
    results = tt.classify(args.image, labels, templates, top_k=args.top_k)
    if args.json:
        rows = [{"image": f, "labels": [{"label": n, "probability": p} for n, p in r]}
                for f, r in zip(args.image, results)]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for f, r in zip(args.image, results):
        print(f)
        print("\n".join(f"  {p:.4f}  {n}" for n, p in r))
    return 0


def cmd_retrieve(args) -> int:
    files = image_files(args.images)
    tt = _load(args)
    image_embeds = tt.embed_images([str(f) for f in files])  # once per run, for every query
    rows = [{"query": q, "results": [{"image": str(files[i]), "score": s}
                                     for i, s in tt.retrieve(q, image_embeds, args.top_k)]} for q in args.query]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        print(f"query: {row['query']}")
        print("\n".join(f"  {r['score']:.4f}  {r['image']}" for r in row["results"]))
    return 0


def add_parser(sub) -> None:
    """Add `embed`, `classify` and `retrieve` to the `vlmkit` subcommands."""
    p = sub.add_parser("embed", help="L2-normalised image or text embeddings of an image-text model (.npy/.jsonl)",
                       description="Embed images or texts with a siglip (SigLIP / CLIP-style), siglip2 (NaFlex) "
                                   "or coca model.")
    _common(p)
    p.add_argument("--images", metavar="DIR", help="embed every image file in this folder (sorted by name)")
    p.add_argument("--image", action="append", default=[], metavar="F", help="an image file (repeat for several)")
    p.add_argument("--texts", metavar="FILE", help="embed each non-blank line of this UTF-8 file")
    p.add_argument("--text", action="append", default=[], type=T.text, metavar="T", help="a text (repeat)")
    p.add_argument("--out", required=True, help="X.npy (float32 [N, E] + X.json listing the inputs) or X.jsonl")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("classify", help="zero-shot image classification with an image-text model",
                       description="Score images against class names filled into prompt templates. "
                       "Probabilities: a softmax over the labels for a model trained with the softmax loss "
                       "(CLIP-style, CoCa), an independent sigmoid per label for one trained with SigLIP's.")
    _common(p)
    p.add_argument("--image", action="append", required=True, metavar="F", help="an image file (repeat for several)")
    p.add_argument("--labels", required=True, help="class names, comma-separated (\"cat,dog\"), or a file, one a line")
    p.add_argument("--templates", action="append", metavar="TEMPLATE|FILE",
                   help="prompt template with {} for the class (repeat, or a file of them; "
                        "default \"a photo of a {}.\"); several are averaged (prompt ensembling)")
    p.add_argument("--top-k", type=T.positive_int, default=5, help="labels printed per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("retrieve", help="rank the images of a folder by similarity to text queries",
                       description="Text-to-image retrieval with an image-text model (cosine similarity).")
    _common(p)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images to search (embedded once)")
    p.add_argument("--query", action="append", required=True, type=T.text, help="a text query (repeat for several)")
    p.add_argument("--top-k", type=T.positive_int, default=5, help="images listed per query (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_retrieve)
