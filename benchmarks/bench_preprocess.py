"""SigLIP/PaliGemma image preprocessing throughput: vlmkit vs transformers' SiglipImageProcessor.

    python benchmarks/bench_preprocess.py [--n 32] [--size 224] [--src-size 640x480] [--json out.json]

All variants get the same decoded RGB PIL images (file decoding is excluded: it is the same PIL
call for everyone) and produce float32 [B, 3, size, size]:

- transformers: its PIL-backend ("slow") SigLIP processor, `SiglipImageProcessorPil` (transformers
  >= 5; `SiglipImageProcessor` before), the one vlmkit's reference path is bit-identical to and
  the only one this environment can run (the default `SiglipImageProcessor` needs torchvision, which
  does not import with the CPU torch here). Its class and backend are printed and stored;
- vlmkit reference: `preprocess_images`, bit-identical to transformers' PIL backend;
- vlmkit fast: `preprocess_images_fast` on the PIL images (uint8 torch resize, fused normalise);
- vlmkit fast tensor: `preprocess_images_fast` on one uint8 [B, 3, h, w] tensor (frames already
  in memory, e.g. video), resized as a batch.

Runs are interleaved and the best of --reps is reported, with the max |difference| from
transformers' output (0 for the reference; within the documented tolerance for the fast paths).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, run_metadata  # noqa: E402

from vlmkit.data.image import preprocess_images, preprocess_images_fast  # noqa: E402


def photo_like(n: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """Smooth colour gradients with edges and mild noise (closer to photos than white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([np.sin(xx * a + c), np.cos(yy * b), np.sin((xx + yy) * c * 0.01)], -1)
        img = (base * 0.5 + 0.5) * 255 + rng.normal(0, 6, (height, width, 3))
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        img[y0:y0 + height // 4, x0:x0 + width // 4] = rng.integers(0, 256, 3)  # a hard-edged block
        images.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"))
    return images


def hf_processor(size: int):
    """transformers' PIL-backend SigLIP image processor and a description of it."""
    import transformers as tf

    cls = getattr(tf, "SiglipImageProcessorPil", None) or tf.SiglipImageProcessor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = cls(size={"height": size, "width": size})
    backend = "PIL" if "Pil" in type(proc).__name__ or not hasattr(tf, "SiglipImageProcessorPil") else "torchvision"
    return proc, {"class": type(proc).__name__, "backend": backend, "transformers": tf.__version__}


RATIO_LEGEND = "x transformers = this row's images/s / transformers' images/s (> 1 = this row faster)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="images per call")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--src-size", default="640x480", help="WIDTHxHEIGHT of the source images")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    meta = run_metadata(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = map(int, args.src_size.split("x"))
    images = photo_like(args.n, w, h)
    frames = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()
    proc, ref_info = hf_processor(args.size)
    variants = {
        f"transformers {ref_info['class']} ({ref_info['backend']} backend)":
            lambda: proc(images, return_tensors="pt")["pixel_values"],
        "vlmkit preprocess_images": lambda: preprocess_images(images, args.size),
        "vlmkit preprocess_images_fast": lambda: preprocess_images_fast(images, args.size),
        "vlmkit fast, uint8 tensor": lambda: preprocess_images_fast(frames, args.size),
    }
    reference = next(iter(variants.values()))()
    times = {k: [] for k in variants}
    outputs = {k: fn() for k, fn in variants.items()}  # warm-up, and outputs to compare
    for _ in range(args.reps):
        for k, fn in variants.items():  # interleaved
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    hf_rate = args.n / min(next(iter(times.values())))
    rows = []
    for k in variants:
        rate = args.n / min(times[k])
        diff = (outputs[k].float() - reference.float()).abs()
        rows.append({"variant": k, "images/s": rate, "x transformers": rate / hf_rate,
                     "max |diff|": float(diff.max()), "mean |diff| (levels)": float(diff.mean()) * 255 * 0.5})
    print(f"{args.n} images {w}x{h} -> {args.size}x{args.size}, torch threads {torch.get_num_threads()}; "
          f"reference: transformers {ref_info['transformers']} {ref_info['class']} ({ref_info['backend']} backend)")
    report(rows, RATIO_LEGEND, args.json, meta, reference=ref_info,
           args={k: str(v) for k, v in vars(args).items()}, samples_s=times)


if __name__ == "__main__":
    main()
