"""`vlmkit experiment curation`: does curating a corrupted image-text set with `vlmkit data curate`
beat training on it raw, at the same step budget?

1. Data (`curation_data`): the synthetic world's training pairs are split into a small CLEAN
   bootstrap split and a raw pool, which is corrupted by seed (30% captions swapped to another
   scene's, 20% near-duplicate images, 10% captions printed in the image, 10% blank images), with
   the ground truth of every row recorded (data/truth.json).
2. Bootstrap score model: a SigLIP two-tower trained briefly on 80% of the bootstrap split and
   exported; the score filter's threshold is the `calib_quantile` of its image-caption cosines on
   the other 20% (clean pairs it never saw): "keep a row if it scores like a known-good pair".
   This is the survey's bootstrapping with a pretrained model's alignment score (CLIPScore).
3. Curate (`vlmkit.curation`, the engine behind `vlmkit data curate`) the raw manifest with, in
   order: `image_uniform` (blank), `ocr_caption` (printed caption; skipped, and said so, without
   rapidocr), `clip_score` (the bootstrap model), `phash_dedup` (perceptual near-duplicates).
   Which rule removed which row is recorded, so each rule gets precision and recall against the
   corruptions (`curation_eval.rule_scores`). Beside the chain (so the numbers above do not
   change), `itm_score` is measured alone on every raw row: a second bootstrap model, the same run
   with `itm.weight` 1, its ITM head's threshold calibrated the same way ("itm_score (beside)").
4. Two SigLIP two-towers of the same shape, initial weights, seed and step budget are trained on
   the raw pool and on the curated rows; both are scored on zero-shot classification of the
   held-out colour-shape compositions (among all 30) and image-text retrieval R@1 on clean
   held-out scenes (the objectives experiment's `zs_unseen` and `retrieval` sets).

Outputs under --out: the tables on stdout, results.json, curation.png, data/ (corrupted manifest,
images, truth.json), curated/ (the curate run: manifest, report.json, report.html), runs/
(bootstrap, bootstrap_itm, raw, curated training folders and the bootstrap exports), tokenizer/.
--out must be absent or empty unless --force; with --force the experiment restarts there: data/
files are rewritten, a curate run in curated/ is removed and redone, the training runs restart (as
in `vlmkit experiment objectives`), other files are kept. ``--size full`` (the default) took ~6 min
on 2 shared CPU cores before the ITM bootstrap was added (one more bootstrap-length run),
``--size small`` ~1-2 min.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vlmkit.curation.config import parse_config
from vlmkit.curation.encoder import TwoTowerEncoder
from vlmkit.curation.engine import CurateRun, build_rules
from vlmkit.curation.io import CurateInput
from vlmkit.curation.rules import chunks
from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.processors.two_tower import image_config
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import ConfigError, OutputError, VlmkitError
from vlmkit.experiments import curation_eval as ev
from vlmkit.experiments.curation_data import corrupt, read_manifest, upscale, write_manifest
from vlmkit.experiments.objectives import refuse_stale_runs
from vlmkit.experiments.objectives_data import IMAGE_SIZE, Source, synth_source
from vlmkit.models.siglip.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from vlmkit.outputs import atomic_write_bytes, check_output_dir
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import OptimConfig
from vlmkit.training.contrastive import (ContrastiveDataConfig, ContrastiveModelConfig, ContrastiveTrainConfig,
                                         ContrastiveTrainer, PairBatches)
from vlmkit.training.itm_head import ItmConfig
from vlmkit.training.outdir import METRICS_NAME, hold_run_folder, remove_stale_temp, trim_metrics
from vlmkit.training.parallelize import DistInfo
from vlmkit.training.recipes.contrastive import ImageTextPairs, build_model, export_model

ARMS = ("raw", "curated")


@dataclass(kw_only=True, frozen=True)
class CurationSize:
    """SigLIP shape, data sizes and step budgets of one --size."""

    width: int
    layers: int
    patch_size: int
    steps: int  # each arm (raw, curated)
    boot_steps: int  # the bootstrap score model
    n_boot: int  # clean bootstrap pairs (80% train, 20% calibrate the threshold)
    n_raw: int  # raw pool, corrupted
    n_eval: int = 200  # zero-shot images and retrieval pairs
    batch_size: int = 64
    lr: float = 1e-3
    calib_quantile: float = 0.1  # score threshold = this quantile of clean held-out scores
    phash_distance: int = 4  # the curate default
    min_std: float = 2.0  # blank images have std 0; a yellow shape on light grey measures ~3


SIZES = {
    "small": CurationSize(width=64, layers=2, patch_size=8, steps=300, boot_steps=400, n_boot=1000, n_raw=1500,
                          n_eval=100),
    "full": CurationSize(width=64, layers=2, patch_size=8, steps=1000, boot_steps=600, n_boot=2000, n_raw=5000),
}


def siglip_config(size: CurationSize) -> SiglipConfig:
    """A small SigLIP two-tower (sigmoid loss) at 32 px; the vocabulary is set from the tokenizer."""
    heads = size.width // 32
    vision = SiglipVisionConfig(hidden_size=size.width, intermediate_size=4 * size.width, num_layers=size.layers,
                                num_heads=heads, image_size=IMAGE_SIZE, patch_size=size.patch_size, use_head=True)
    text = SiglipTextConfig(vocab_size=8, hidden_size=size.width, intermediate_size=4 * size.width,
                            num_layers=size.layers, num_heads=heads, max_position_embeddings=16)
    return SiglipConfig(vision=vision, text=text)


def train_siglip(name: str, size: CurationSize, steps: int, tok: Tokenizer, train: ImageTextPairs, out: Path,
                 seed: int, itm_weight: float = 0.0) -> tuple[ContrastiveTrainer, list[float], float]:
    """Train one SigLIP run in out/runs/<name> (with an ITM head if `itm_weight` > 0); returns
    (trainer: `.model`, `.loss_module.itm_head`, per-step losses, train seconds)."""
    run_dir = out / "runs" / name
    remove_stale_temp(run_dir)  # a re-run restarts (module docstring), as the objectives experiment
    trim_metrics(run_dir / METRICS_NAME, 0, 0)
    cfg = ContrastiveTrainConfig(
        recipe=f"curation-{name}", out_dir=str(run_dir), steps=steps, seed=seed, log_every=50, ckpt_every=0,
        export=False, keep_checkpoints=1, model=ContrastiveModelConfig(family="siglip", source="custom"),
        data=ContrastiveDataConfig(batch_size=size.batch_size, shuffle_seed=seed), itm=ItmConfig(weight=itm_weight),
        optim=OptimConfig(lr=size.lr, weight_decay=0.05, warmup_steps=max(steps // 20, 1), grad_clip=1.0),
    )
    model = build_model(siglip_config(size), tok, cfg.model.init_std, seed)  # same seed: same initial weights
    torch.manual_seed(seed)
    batches = PairBatches(ShuffledStream(train, seed=seed), tok, model, size.batch_size)
    t0 = time.perf_counter()
    trainer = ContrastiveTrainer(cfg, model, batches, DistInfo())
    result = trainer.fit()
    model.eval()
    return trainer, result.losses, time.perf_counter() - t0


def _rows(pairs: ImageTextPairs) -> list[dict]:
    """Pairs as curate rows, the image at its stored size (the same resizing as during curation)."""
    return [{"__key__": f"calib:{i}", "_image": upscale(img), "text": t} for i, (img, t) in
            enumerate(zip(pairs.images, pairs.texts))]


def _split(boot: ImageTextPairs) -> tuple[ImageTextPairs, ImageTextPairs]:
    """The bootstrap split: 80% to train the score model, 20% to calibrate its threshold."""
    n_fit = int(0.8 * len(boot))
    return (ImageTextPairs(boot.images[:n_fit], boot.texts[:n_fit]),
            ImageTextPairs(boot.images[n_fit:], boot.texts[n_fit:]))


def calibrate_threshold(folder: Path, calib: ImageTextPairs, quantile: float) -> tuple[float, list[float]]:
    """The `quantile` of the exported score model's cosines on clean held-out pairs, computed by the
    curate rule's own encoder; also the scores."""
    enc = TwoTowerEncoder(str(folder))
    rows = _rows(calib)
    scores = (enc.encode(rows, "image") * enc.encode(rows, "text")).sum(-1)  # [N] cosine
    return float(np.quantile(scores, quantile)), [float(s) for s in scores]


def curate_config(score_model: Path, threshold: float, size: CurationSize) -> tuple[object, list[str]]:
    """The curate config (rules in run order) and notes on rules skipped for a missing extra."""
    rules = {"image_uniform": {"min_std": size.min_std}, "ocr_caption": {"det_side": 128},
             "clip_score": {"model": str(score_model), "threshold": threshold},
             "phash_dedup": {"max_distance": size.phash_distance}}
    notes = []
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        del rules["ocr_caption"]
        notes.append("rapidocr-onnxruntime is not installed: the ocr_caption rule was skipped "
                     "(pip install 'vlmkit[curate]')")
    return parse_config({"run": {"batch_size": 64, "examples": 16}, "rules": rules}), notes


class RecordRemovals:
    """A rule as the curate engine sees it, plus the input rows it removed (`removed`). The engine
    calls `score_batch(rows)` and then `decide_batch(values)` on the same rows, in input order."""

    def __init__(self, rule) -> None:
        self.rule, self.removed, self._rows = rule, [], []

    def __getattr__(self, name: str):
        return getattr(self.rule, name)

    def score_batch(self, rows: list[dict]) -> list:
        self._rows = [r["__index__"] for r in rows]
        return self.rule.score_batch(rows)

    def decide_batch(self, values: list) -> list[bool]:
        decisions = self.rule.decide_batch(values)
        self.removed += [i for i, keep in zip(self._rows, decisions) if not keep]
        return decisions


def run_curate(manifest: Path, out: Path, config) -> tuple[dict, dict[str, list[int]]]:
    """Curate `manifest` into `out` with the curate engine; (report, {rule: removed row indices})."""
    if (out / ".curate").is_dir():
        shutil.rmtree(out)  # this experiment's own earlier curate run (--force): redone from scratch
    inp = CurateInput(manifest, config.run.text_field, config.run.image_field)
    rules = [RecordRemovals(r) for r in build_rules(config)]
    report = CurateRun(inp, check_output_dir(out, overwrite=True), config, rules).run()
    return report, {r.name: r.removed for r in rules}


def evaluate(model, tok: Tokenizer, source: Source) -> dict:
    i2t, t2i = ev.retrieval_r1(model, tok, source.retrieval)
    return {"zs_unseen": ev.zero_shot_top1(model, tok, source.zs_unseen), "i2t_r1": i2t, "t2i_r1": t2i}


def run_curation(size: str = "full", out: str | Path = "runs/curation", seed: int = 0, threads: int = 1,
                 force: bool = False) -> dict:
    """Run the experiment (module docstring); returns the results dict also saved as results.json.

    `threads`: torch CPU threads while it runs (1: these models are tiny, see `run_objectives`)."""
    if size not in SIZES:
        raise ConfigError(f"unknown --size {size!r} for the curation experiment; choose from {sorted(SIZES)}")
    out = check_output_dir(out, force)
    spec = SIZES[size]
    refuse_stale_runs(out / "runs", spec.boot_steps, ("bootstrap", "bootstrap_itm"))
    refuse_stale_runs(out / "runs", spec.steps, ARMS)
    for folder in ("data", "curated"):
        if (out / folder).exists() and not (out / folder).is_dir():
            raise OutputError(f"{out / folder} is a file; the experiment writes its {folder} folder there")
    if (out / "curated").is_dir() and any((out / "curated").iterdir()) and not (out / "curated" / ".curate").is_dir():
        raise OutputError(f"{out / 'curated'} holds files that are no curate run; remove it or choose another --out")
    previous = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        with hold_run_folder(out, DistInfo()):  # one experiment at a time in `out`
            return _run(size, spec, out, seed)
    finally:
        torch.set_num_threads(previous)


def _bootstrap(spec: CurationSize, out: Path, seed: int, tok: Tokenizer, boot: ImageTextPairs, source: Source) -> dict:
    """Train and export the score model; calibrate the score threshold on clean held-out pairs."""
    fit, calib = _split(boot)
    n_fit = len(fit)
    trainer, losses, secs = train_siglip("bootstrap", spec, spec.boot_steps, tok, fit, out, seed)
    model = trainer.model
    folder = export_model(model, out / "runs" / "bootstrap" / "export", out / "tokenizer", image_config(model))
    threshold, scores = calibrate_threshold(folder, calib, spec.calib_quantile)
    print(f"bootstrap: {spec.boot_steps} steps on {n_fit} clean pairs in {secs:.0f} s; score threshold "
          f"{threshold:.4f} ({spec.calib_quantile:.0%} quantile of {len(calib)} clean held-out pairs)", flush=True)
    return {"pairs": n_fit, "train_s": secs, "losses": losses, "folder": folder, "threshold": threshold,
            "calib_scores": scores, **evaluate(model, tok, source)}


def _itm_side(spec: CurationSize, out: Path, seed: int, tok: Tokenizer, boot: ImageTextPairs, manifest: Path,
              kinds: list[str]) -> dict:
    """The `itm_score` rule BESIDE the curate chain, which it leaves unchanged: a second bootstrap
    model, the first one's run plus `itm.weight` 1, exported with its ITM head; threshold = the
    same `calib_quantile` of its match probabilities on the clean calibration pairs; it scores
    every raw row, so its recall is over the whole pool, as the chain rules' is."""
    fit, calib = _split(boot)
    trainer, _, secs = train_siglip("bootstrap_itm", spec, spec.boot_steps, tok, fit, out, seed, itm_weight=1.0)
    model = trainer.model
    head = (trainer.loss_module.itm_head.eval(), model.itm_head_config)
    folder = export_model(model, out / "runs" / "bootstrap_itm" / "export", out / "tokenizer", image_config(model), head)
    config = parse_config({"rules": {"itm_score": {"model": str(folder), "threshold": 0.0}}})
    rule = build_rules(config)[0]
    threshold = float(np.quantile(rule.score_batch(_rows(calib)), spec.calib_quantile))
    rows = CurateInput(manifest, config.run.text_field, config.run.image_field).rows()
    removed = [r["__index__"] for chunk in chunks(rows, 64) for r, v in zip(chunk, rule.score_batch(chunk))
               if v < threshold]
    scores = ev.rule_scores({"itm_score": removed}, kinds)["itm_score"]
    print(f"itm_score beside the chain: threshold {threshold:.4f}, removed {len(removed)}, precision "
          f"{scores['precision']:.3f} recall {scores['recall']:.3f} on swapped captions ({secs:.0f} s to train)",
          flush=True)
    return {**scores, "threshold": threshold, "train_s": secs}


def _run(size: str, spec: CurationSize, out: Path, seed: int) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    source = synth_source(spec.n_boot + spec.n_raw, spec.n_eval, seed)
    boot = ImageTextPairs(source.train.images[:spec.n_boot], source.train.texts[:spec.n_boot])
    pool = ImageTextPairs(source.train.images[spec.n_boot:], source.train.texts[spec.n_boot:])
    data = corrupt(pool, seed)
    manifest = write_manifest(data, out / "data")
    tok = Tokenizer.from_folder(build_small_tokenizer(sorted(set(source.train.texts)), out / "tokenizer", 512))
    print(f"data: {len(boot)} clean bootstrap pairs, {len(pool)} raw pairs corrupted in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    bootstrap = _bootstrap(spec, out, seed, tok, boot, source)
    config, notes = curate_config(bootstrap.pop("folder"), bootstrap["threshold"], spec)
    t1 = time.perf_counter()
    report, removed_by = run_curate(manifest, out / "curated", config)
    kept_ids, curated = read_manifest(out / "curated" / "manifest.jsonl")
    print(f"curate: kept {len(kept_ids)} of {len(pool)} rows in {time.perf_counter() - t1:.0f} s", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)
    _, raw = read_manifest(manifest)
    arms = {}
    for name, pairs in (("raw", raw), ("curated", curated)):
        trainer, losses, secs = train_siglip(name, spec, spec.steps, tok, pairs, out, seed)
        arms[name] = {"pairs": len(pairs), "train_s": secs, "losses": losses, **evaluate(trainer.model, tok, source)}
        print(f"{name}: trained {spec.steps} steps on {len(pairs)} pairs in {secs:.0f} s", flush=True)
    rules = ev.rule_scores(removed_by, data.kinds)
    beside = {"itm_score (beside)": _itm_side(spec, out, seed, tok, boot, manifest, data.kinds)}
    return _report(size, spec, out, seed, t0, arms, bootstrap, rules, kept_ids, data.kinds, report, notes, beside)


def _report(size, spec, out, seed, t0, arms, bootstrap, rules, kept_ids, kinds, report, notes, beside) -> dict:
    table = ev.format_tables({**arms, "bootstrap": bootstrap}, {**rules, **beside})
    print(table)
    raw, cur = arms["raw"], arms["curated"]
    swapped_recall = rules.get("clip_score", {}).get("recall")
    targets = {"curated_beats_raw_zs_unseen": cur["zs_unseen"] > raw["zs_unseen"],
               "curated_beats_raw_r1": cur["i2t_r1"] + cur["t2i_r1"] > raw["i2t_r1"] + raw["t2i_r1"],
               "score_filter_swapped_recall_ge_0.8": swapped_recall is not None and swapped_recall >= 0.8}
    info = {"size": size, "spec": asdict(spec), "seed": seed, "total_s": time.perf_counter() - t0,
            "arms": arms, "bootstrap": bootstrap, "rules": rules, "beside_chain": beside, "targets": targets,
            "notes": notes,
            "kept_ids": kept_ids, "kept_by_kind": ev.kept_composition(kept_ids, kinds),
            "raw_by_kind": ev.kept_composition(list(range(len(kinds))), kinds),
            "curate_removed_by": report.get("removed_by"), "table": table}
    atomic_write_bytes(out / "results.json", json.dumps(info, indent=1).encode())
    png = ev.plot({**arms, "bootstrap": bootstrap}, {**rules, **beside}, out / "curation.png")
    print(f"targets: {json.dumps(targets)}\nwrote {out / 'results.json'} and {png} ({info['total_s']:.0f} s in all)",
          flush=True)
    return info


def run_curation_args(args: argparse.Namespace) -> int:
    """Run a parsed `experiment curation` command: 0, or 2 after a one-line error."""
    try:
        run_curation(args.size or "full", args.out or "runs/curation", args.seed, args.threads, args.force)
    except VlmkitError as e:
        print(f"vlmkit: error: {e}", file=sys.stderr)
        return 2
    return 0
