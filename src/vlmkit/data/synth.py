"""Seeded synthetic scenes (coloured shapes + rendered words) and PaliGemma-format datasets.

The public entry point of the synthetic data; it re-exports the two modules it is built on:

- `vlmkit.data.synth_scene`: the world (`SynthConfig`, colours, shapes, words) and the renderer
  (`generate_scene`), with the box convention;
- `vlmkit.data.synth_examples`: the PaLI tasks read off a scene (caption, VQA, detect, OCR), as
  `Example`s (`all_examples`, `make_examples`) and manifest rows (`example_row`).

This module enumerates a dataset (`iter_scenes`: scene i depends only on (seed, i)) and writes
it byte-reproducibly (`write_dataset`: PNGs + a JSONL manifest, or webdataset tar shards).
Command line: ``python -m vlmkit.data.synth OUT --num-scenes N [--seed S] [--shards]``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from vlmkit.data.synth_examples import (
    Example,
    _loc_tokens,  # noqa: F401  (re-exported for tests)
    all_examples,
    example_row,
    make_examples,
    position_name,
)
from vlmkit.data.synth_scene import (
    COLORS,
    SHAPES,
    TASKS,
    WORDS,
    Scene,
    SceneObject,
    SceneWord,
    SynthConfig,
    generate_scene,
)
from vlmkit.errors import ConfigError
from vlmkit.outputs import atomic_folder

__all__ = [
    "COLORS", "SHAPES", "TASKS", "WORDS", "Example", "Scene", "SceneObject", "SceneWord",
    "SynthConfig", "all_examples", "example_row", "generate_scene", "iter_scenes", "main",
    "make_examples", "position_name", "write_dataset",
]  # fmt: skip


def iter_scenes(n_scenes: int, cfg: SynthConfig, start: int = 0):
    """Yield (index, scene, examples). Scene i depends only on (cfg.seed, i), so any slice of a
    dataset can be regenerated alone and different seeds give unrelated splits."""
    for i in range(start, start + n_scenes):
        scene = generate_scene(np.random.default_rng([cfg.seed, i]), cfg)
        yield i, scene, make_examples(scene, cfg)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # PIL writes no timestamp: reproducible
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: byte-reproducible
    tar.addfile(info, io.BytesIO(data))


def write_dataset(
    out_dir: str | Path, n_scenes: int, cfg: SynthConfig, *, shards: bool = False,
    shard_size: int = 1000, overwrite: bool = True,
) -> Path:  # fmt: skip
    """Render `n_scenes` scenes and write them; byte-identical output for the same cfg.

    Layout: ``images/NNNNNN.png`` + ``manifest.jsonl`` with one row per example
    (``{"image": "images/NNNNNN.png", **example_row(...)}``); or, with `shards`, webdataset tars
    ``shards/shard-NNNNNN.tar`` of `shard_size` samples, one per example: ``{key}.png`` +
    ``{key}.json`` (the row). Both write ``info.json`` (config, per-task counts). Returns the
    manifest path, or the shard folder. The dataset appears whole or not at all
    (`vlmkit.outputs.atomic_folder`): a non-empty `out_dir` is refused unless `overwrite`, and
    even then only same-named files are replaced.
    """
    if n_scenes < 1 or shard_size < 1:
        raise ConfigError(f"n_scenes and shard_size must be >= 1, got {n_scenes}, {shard_size}")
    with atomic_folder(out_dir, overwrite) as tmp:
        _write_into(tmp, n_scenes, cfg, shards, shard_size)
    return Path(out_dir) / ("shards" if shards else "manifest.jsonl")


def _write_into(out: Path, n_scenes: int, cfg: SynthConfig, shards: bool, shard_size: int) -> None:
    counts, n = Counter(), 0
    (out / ("shards" if shards else "images")).mkdir(parents=True, exist_ok=True)
    manifest = None if shards else open(out / "manifest.jsonl", "w", encoding="utf-8")
    tar = None
    try:
        for i, scene, examples in iter_scenes(n_scenes, cfg):
            png, rel = _png(scene.image), f"images/{i:06d}.png"
            if manifest:
                (out / rel).write_bytes(png)
            for j, ex in enumerate(examples):
                row, n = example_row(ex, i, cfg.image_size), n + 1
                counts[f"{ex.task}/{ex.subtask}"] += 1
                if manifest:
                    manifest.write(json.dumps({"image": rel} | row) + "\n")
                    continue
                if (n - 1) % shard_size == 0:  # start the next shard
                    if tar is not None:
                        tar.close()
                    path = out / "shards" / f"shard-{(n - 1) // shard_size:06d}.tar"
                    tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
                _tar_add(tar, f"{i:06d}_{j:02d}.png", png)
                _tar_add(tar, f"{i:06d}_{j:02d}.json", json.dumps(row).encode())
    finally:
        for f in (manifest, tar):
            if f is not None:
                f.close()
    info = {"config": asdict(cfg), "n_scenes": n_scenes, "counts": dict(sorted(counts.items()))}
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """``python -m vlmkit.data.synth OUT --num-scenes N [--seed S] [--shards]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vlmkit.data.synth", description=main.__doc__)
    p.add_argument("out_dir")
    p.add_argument("--num-scenes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="use another seed for a held-out split")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--examples-per-scene", type=int, default=4)
    p.add_argument("--shards", action="store_true", help="write webdataset tar shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    a = p.parse_args(argv)
    cfg = SynthConfig(seed=a.seed, image_size=a.image_size, examples_per_scene=a.examples_per_scene)
    path = write_dataset(a.out_dir, a.num_scenes, cfg, shards=a.shards, shard_size=a.shard_size)
    print(f"wrote {a.num_scenes} scenes to {path}")


if __name__ == "__main__":
    main()
