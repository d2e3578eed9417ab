"""`vlmkit quantize`: write a checkpoint's weight-only quantised copy (safetensors, no pickle).

    vlmkit quantize --model vlmkit-shapes-tiny --quantize int4 --group-size 32 --out tiny-int4
    vlmkit generate --model tiny-int4 --image cat.png --task caption     # loads it quantised

The folder records its scheme in config.json (`vlmkit.generation.quant`); loading it gives the
same logits, bit for bit, as quantising the source in memory with the same flags and dtype.
"""

import argparse

from vlmkit import cli_types as T


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="write a weight-only int8 / int4 copy of a checkpoint",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    p.add_argument("--quantize", choices=T.QUANTIZE_CHOICES, required=True,
                   help="int8 (per output channel) or int4 (group-wise, see --group-size)")
    p.add_argument("--group-size", type=int, choices=T.GROUP_SIZE_CHOICES,
                   help="input features per int4 scale and zero (default 64; needs --quantize int4)")
    p.add_argument("--dtype", default="auto", help="dtype of scales and float parts: float32, bfloat16, float16 or auto")
    p.add_argument("--out", required=True, help="folder to write (must be absent or empty unless --force)")
    p.add_argument("--force", action="store_true", help=T.FORCE_HELP)
    p.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from vlmkit.outputs import check_output_dir
    from vlmkit.pipeline import load

    check_output_dir(args.out, args.force)  # before loading: a refused folder costs nothing
    kwargs = T.speed_kwargs(args)  # checks --group-size against --quantize
    pipe = load(args.model, dtype=args.dtype, quantize=kwargs["quantize"], group_size=kwargs["group_size"])
    print(pipe.save_quantized(args.out, overwrite=args.force))
    return 0
