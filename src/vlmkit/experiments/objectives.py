"""`vlmkit experiment objectives`: contrastive-only vs captioning-only vs CoCa, same model and data.

The seed exercise of the contrastive/CoCa issue. Three CoCa models (arXiv:2205.01917) of the same
size, from the same initial weights, are trained on the same image-caption pairs for the same
number of steps with the contrastive training engine (`vlmkit.training.contrastive`):

    contrastive   SigLIP sigmoid loss only (caption weight 0: the multimodal decoder is unused)
    captioning    next-token captioning loss only (contrastive weight 0)
    coca          both (weights 1 and 2, the paper's)

Using the CoCa architecture for all three keeps the image encoder and the text decoder identical,
so only the objective differs. Data and zero-shot splits: `objectives_data` (synthetic scenes and
colourised Fashion-MNIST with held-out colour/kind compositions); scoring: `objectives_eval`
(embeddings for the contrastive heads, caption log-likelihood for the captioning-only model).

Outputs under --out: a table on stdout, results.json (every metric, sample captions, loss
curves), objectives.png (bars per metric and the loss curves) and each model's run folder
(metrics.jsonl, final checkpoint). --out must be absent or empty unless --force; a re-run with
--force restarts the three runs (the experiment has no intermediate checkpoints, and a finished
run could only be reused after proving it was trained with the same size, seed and data): each
run folder's metrics.jsonl and final checkpoint are replaced, nothing is deleted, other files stay,
and a checkpoint of an earlier run with another step count is refused rather than mixed in.
Fashion-MNIST needs ``sudo apt-get install dataset-fashion-mnist`` (or ``--data synth``). The
default size takes about 8-10 minutes on 2 CPU cores; ``--size small`` about 1, ``--size large``
is for a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vlmkit import cli_types as T
from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import ConfigError, OutputError, VlmkitError
from vlmkit.experiments import objectives_eval as ev
from vlmkit.experiments.objectives_data import IMAGE_SIZE, Source, fashion_source, synth_source
from vlmkit.experiments.plot import bar_panel, curve_panel, legend, new_canvas, save_png
from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.init import init_weights
from vlmkit.models.siglip.config import SiglipVisionConfig
from vlmkit.outputs import atomic_write_bytes, check_output_dir
from vlmkit.training.checkpoint import step_dir
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import OptimConfig
from vlmkit.training.contrastive import (ContrastiveDataConfig, ContrastiveModelConfig, ContrastiveTrainConfig,
                                         ContrastiveTrainer, PairBatches, text_vocab_size)
from vlmkit.training.outdir import METRICS_NAME, hold_run_folder, remove_stale_temp, trim_metrics
from vlmkit.training.parallelize import DistInfo
from vlmkit.training.recipes.contrastive import ImageTextPairs

OBJECTIVES = {"contrastive": (1.0, 0.0), "captioning": (0.0, 2.0), "coca": (1.0, 2.0)}  # (con, cap) weights
SOURCES = ("synth", "fashion")


@dataclass(kw_only=True, frozen=True)
class ExperimentSize:
    """Model shape (ViT + CoCa decoders) and training budget of one --size."""

    vision_width: int
    vision_layers: int
    patch_size: int
    width: int
    unimodal_layers: int
    multimodal_layers: int
    steps: int
    batch_size: int = 64
    n_train: int = 12_000  # training pairs per source
    n_eval: int = 200  # images per evaluation set and source
    lr: float = 1e-3


SIZES = {
    "small": ExperimentSize(vision_width=64, vision_layers=2, patch_size=8, width=64, unimodal_layers=1,
                            multimodal_layers=1, steps=250, n_train=4000, n_eval=100),
    "default": ExperimentSize(vision_width=96, vision_layers=3, patch_size=4, width=96, unimodal_layers=2,
                              multimodal_layers=2, steps=500),
    "large": ExperimentSize(vision_width=192, vision_layers=6, patch_size=4, width=192, unimodal_layers=3,
                            multimodal_layers=3, steps=4000, batch_size=128, n_train=50_000, n_eval=500,
                            lr=5e-4),
}


def coca_config(size: ExperimentSize, tok: Tokenizer, weights: tuple[float, float]) -> CocaConfig:
    heads = size.width // 32
    vision = SiglipVisionConfig(hidden_size=size.vision_width, intermediate_size=4 * size.vision_width,
                                num_layers=size.vision_layers, num_heads=size.vision_width // 32,
                                image_size=IMAGE_SIZE, patch_size=size.patch_size)
    return CocaConfig(vision=vision, vocab_size=text_vocab_size(tok), width=size.width, num_heads=heads,
                      mlp_dim=4 * size.width, num_unimodal_layers=size.unimodal_layers,
                      num_multimodal_layers=size.multimodal_layers, context_length=16, embed_dim=size.width,
                      num_caption_queries=16, contrastive_loss="sigmoid", contrastive_weight=weights[0],
                      caption_weight=weights[1], pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                      eos_token_id=tok.eos_id)


def build_sources(names: list[str], size: ExperimentSize, seed: int, fashion_root=None) -> list[Source]:
    out = []
    for name in names:
        if name == "synth":
            out.append(synth_source(size.n_train, size.n_eval, seed))
        else:
            out.append(fashion_source(size.n_train, size.n_eval, seed, fashion_root))
    return out


def train_one(name: str, size: ExperimentSize, tok: Tokenizer, train: ImageTextPairs, out: Path,
              seed: int) -> tuple[CoCa, list[float], float]:
    """Train one objective's model; returns (model, per-step losses, train seconds)."""
    run_dir = out / name
    # A re-run restarts (module docstring): an interrupted attempt's temp folders go (the lock of
    # `out` is held), the old metrics rows are replaced rather than appended to; nothing else is removed.
    remove_stale_temp(run_dir)
    trim_metrics(run_dir / METRICS_NAME, 0, 0)
    cfg = ContrastiveTrainConfig(
        recipe=f"objectives-{name}", out_dir=str(run_dir), steps=size.steps, seed=seed, log_every=50,
        ckpt_every=0, export=False, keep_checkpoints=1,
        model=ContrastiveModelConfig(family="coca", source="custom"),
        data=ContrastiveDataConfig(batch_size=size.batch_size, shuffle_seed=seed),
        optim=OptimConfig(lr=size.lr, weight_decay=0.05, warmup_steps=max(size.steps // 20, 1), grad_clip=1.0),
    )
    # Same seed -> the same initial weights for all three objectives.
    model = init_weights(CoCa(coca_config(size, tok, OBJECTIVES[name])), seed=seed).train()
    torch.manual_seed(seed)
    batches = PairBatches(ShuffledStream(train, seed=seed), tok, model, size.batch_size)
    trainer = ContrastiveTrainer(cfg, model, batches, DistInfo())
    t0 = time.perf_counter()
    result = trainer.fit()
    return model.eval(), result.losses, time.perf_counter() - t0


def refuse_stale_runs(out: Path, steps: int, names: tuple[str, ...] = tuple(OBJECTIVES)) -> None:
    """Refuse an --out whose earlier run folders would mix with this run's: a run folder's path is
    a file, or it holds a checkpoint other than the `steps` one this run replaces (from a run of
    another size: `latest` would no longer name it, and pruning keeps the highest step, not ours).
    `names`: the run folders under `out` (the curation experiment passes its own)."""
    for name in names:
        run_dir, keep = out / name, step_dir(out / name / "checkpoints", steps)
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(f"{run_dir} is a file; the experiment writes its {name} run folder there")
        stale = sorted(p for p in keep.parent.glob("step_*") if p != keep) if keep.parent.is_dir() else []
        if stale:
            raise OutputError(f"{stale[-1]} is left from an earlier run with another step count and would "
                              f"mix with this one; remove it or choose another --out")


def evaluate(name: str, model: CoCa, tok: Tokenizer, source: Source) -> dict:
    """Every metric of one model on one source (None where a metric does not apply)."""
    mode = "likelihood" if name == "captioning" else "embedding"
    i2t, t2i = ev.retrieval_r1(model, tok, source.retrieval, mode)
    res = {"scoring": mode, "zs_unseen": ev.zero_shot_top1(model, tok, source.zs_unseen, mode),
           "zs_class": ev.zero_shot_top1(model, tok, source.zs_class, mode) if source.zs_class else None,
           "i2t_r1": i2t, "t2i_r1": t2i, "cider": None}
    if name != "contrastive":
        res["cider"], preds = ev.caption_cider(model, tok, source.captions)
        res["samples"] = [{"reference": r, "generated": p} for r, p in zip(source.captions.texts[:5], preds)]
    if name == "coca":  # CoCa can also be used as a generative classifier
        res["zs_unseen_likelihood"] = ev.zero_shot_top1(model, tok, source.zs_unseen, "likelihood")
    return res


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(results: dict) -> str:
    """Rows = objectives; per source: zero-shot, R@1 both ways, CIDEr-D; then train time."""
    sources = list(next(iter(results.values()))["metrics"])
    cols = ["objective"]
    for s in sources:
        cols += [f"{s} zs-unseen"] + ([f"{s} zs-class"] if s == "fashion" else []) + [
            f"{s} R@1 i->t", f"{s} R@1 t->i", f"{s} CIDEr"]
    cols.append("train s")
    rows = []
    for name, r in results.items():
        row = [name]
        for s in sources:
            m = r["metrics"][s]
            row += [_fmt(m["zs_unseen"])] + ([_fmt(m["zs_class"])] if s == "fashion" else []) + [
                _fmt(m["i2t_r1"]), _fmt(m["t2i_r1"]), _fmt(m["cider"])]
        rows.append(row + [f"{r['train_s']:.0f}"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def plot(results: dict, path: Path) -> Path:
    """objectives.png: bars of the [0, 1] metrics, CIDEr-D bars, and the training loss curves."""
    names, sources = list(results), list(next(iter(results.values()))["metrics"])
    keys = [(s, k) for s in sources for k in ("zs_unseen", "zs_class", "i2t_r1", "t2i_r1")
            if results[names[0]]["metrics"][s].get(k) is not None or k != "zs_class"]
    keys = [(s, k) for s, k in keys if not (k == "zs_class" and s != "fashion")]
    groups = [f"{s[:5]} {k.replace('_r1', '').replace('zs_', 'zs-')}" for s, k in keys]
    image, d = new_canvas(1200, 520)
    series = {n: [results[n]["metrics"][s][k] for s, k in keys] for n in names}
    bar_panel(d, (60, 40, 700, 460), "zero-shot top-1 / retrieval R@1", groups, series, 1.0)
    cider = {n: [results[n]["metrics"][s]["cider"] for s in sources] for n in names}
    top = max([v for vs in cider.values() for v in vs if v is not None] + [1.0])
    bar_panel(d, (760, 40, 930, 460), "CIDEr-D", list(sources), cider, top)
    # Loss scales differ per objective: plot each relative to its first step.
    curves = {n: [v / results[n]["losses"][0] for v in results[n]["losses"]] for n in names}
    curve_panel(d, (990, 40, 1180, 300), "loss / first loss", curves)
    legend(d, (990, 340), names)
    return save_png(image, path)


def run_objectives(size: str = "default", out: str | Path = "runs/objectives", data: tuple[str, ...] = SOURCES,
                   seed: int = 0, fashion_root: str | None = None, threads: int = 1, force: bool = False) -> dict:
    """Run the experiment (module docstring); returns {objective: {metrics, losses, train_s}}.

    `force`: --out may be non-empty (the runs restart there, see the module docstring).

    `threads`: torch CPU threads while it runs. One by default: these models are so small that
    OpenMP synchronisation dominates, and on a shared 2-core machine 2 threads measured 4x
    slower per step than 1 (39 vs 180 ms at --size small).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        return _run(size, check_output_dir(out, force), data, seed, fashion_root)
    finally:
        torch.set_num_threads(previous)


def _run(size: str, out: Path, data: tuple[str, ...], seed: int, fashion_root: str | None) -> dict:
    if size not in SIZES:
        raise ConfigError(f"unknown --size {size!r}; choose from {sorted(SIZES)}")
    bad = [d for d in data if d not in SOURCES]
    if bad or not data:
        raise ConfigError(f"--data takes a comma-separated subset of {SOURCES}, got {list(data)}")
    spec = SIZES[size]
    refuse_stale_runs(out, spec.steps)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    sources = build_sources(list(data), spec, seed, fashion_root)
    with hold_run_folder(out, DistInfo()):  # one experiment at a time in `out`; written only from here
        return _train_all(size, spec, out, data, seed, sources, t0)


def _train_all(size: str, spec: ExperimentSize, out: Path, data: tuple[str, ...], seed: int,
               sources: list[Source], t0: float) -> dict:
    train = ImageTextPairs(torch.cat([s.train.images for s in sources]), [t for s in sources for t in s.train.texts])
    tok = Tokenizer.from_folder(build_small_tokenizer(sorted(set(train.texts)), out / "tokenizer", 512))
    print(f"data: {len(train)} training pairs ({', '.join(s.name for s in sources)}) in "
          f"{time.perf_counter() - t0:.0f} s; tokenizer {tok.vocab_size} ids", flush=True)
    results = {}
    for name in OBJECTIVES:
        model, losses, train_s = train_one(name, spec, tok, train, out, seed)
        results[name] = {"train_s": train_s, "losses": losses,
                         "metrics": {s.name: evaluate(name, model, tok, s) for s in sources}}
        print(f"{name}: trained {spec.steps} steps in {train_s:.0f} s", flush=True)
    table = format_table(results)
    print(table)
    info = {"size": size, "spec": asdict(spec), "data": list(data), "seed": seed,
            "total_s": time.perf_counter() - t0, "table": table, "results": results}
    atomic_write_bytes(out / "results.json", json.dumps(info, indent=1).encode())
    print(f"wrote {out / 'results.json'} and {plot(results, out / 'objectives.png')} "
          f"({info['total_s']:.0f} s in all)", flush=True)
    return results


def add_experiment_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `vlmkit experiment NAME ...`."""
    parser.add_argument("name", choices=["objectives", "curation"],
                        help="experiment to run (curation: raw vs `vlmkit data curate`d corrupted pairs)")
    parser.add_argument("--size", help="model and budget; objectives: small, default (the default, ~8-10 min on "
                                       "2 CPU cores), large; curation: small, full (the default)")
    parser.add_argument("--out", help="output folder (table, results.json, PNG; default runs/NAME); must be absent "
                                      "or empty unless --force")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out: its contrastive/, captioning/ and coca/ runs restart "
                             "(their metrics and final checkpoints replaced, nothing deleted, other files kept)")
    parser.add_argument("--data", default=",".join(SOURCES),
                        help="comma-separated data sources: synth, fashion (Fashion-MNIST needs "
                             "`sudo apt-get install dataset-fashion-mnist`)")
    parser.add_argument("--seed", type=T.seed, default=0, help="data, initialisation and order seed")
    parser.add_argument("--fashion-root", help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--threads", type=T.positive_int, default=1, help="torch CPU threads (1 is fastest for these sizes)")
    return parser


def run_experiment_args(args: argparse.Namespace) -> int:
    """Run a parsed `experiment` command: 0, or 2 after a one-line error."""
    if args.name == "curation":
        from vlmkit.experiments.curation import run_curation_args

        return run_curation_args(args)
    try:
        run_objectives(args.size or "default", args.out or "runs/objectives", tuple(d.strip() for d in args.data.split(",") if d.strip()),
                       args.seed, args.fashion_root, args.threads, args.force)
    except VlmkitError as e:
        print(f"vlmkit: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_experiment_arguments(argparse.ArgumentParser(prog="vlmkit experiment",
                                                              description=__doc__.split("\n")[0]))
    return run_experiment_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
