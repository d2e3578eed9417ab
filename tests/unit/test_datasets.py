"""Data readers: manifest validation, tar shards, deterministic rank-split resumable streams."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.datasets import (
    Augment,
    JsonlDataset,
    ShuffledStream,
    TarShardDataset,
    augment_image,
)
from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.errors import ConfigError, DataError, ImageError

CFG = SynthConfig(examples_per_scene=3)
N_SCENES = 14  # 42 samples: several shards of 8, more samples than the shuffle buffer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest = write_dataset(root / "jsonl", N_SCENES, CFG)
    shards = write_dataset(root / "tar", N_SCENES, CFG, shards=True, shard_size=8)
    return manifest, shards


def _uid(sample: dict) -> tuple:
    return sample["scene"], sample["prefix"]


def _write_rows(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_manifest_reads_back(data):
    manifest, _ = data
    ds = JsonlDataset(manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(ds) == len(rows) == N_SCENES * 3 and not ds.skipped
    sample = ds[5]
    assert sample["image"].mode == "RGB" and sample["image"].size == (64, 64)
    assert (sample["prefix"], sample["suffix"], sample["task"]) == (
        rows[5]["prefix"], rows[5]["suffix"], rows[5]["task"])  # fmt: skip
    with Image.open(manifest.parent / rows[5]["image"]) as ref:
        assert np.array_equal(np.asarray(sample["image"]), np.asarray(ref.convert("RGB")))


def test_bad_rows_are_counted_by_reason(tmp_path, caplog):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = {"image": "ok.png", "prefix": "caption en", "suffix": "a red square"}
    lines = [
        json.dumps(good),
        json.dumps(good | {"image": ["ok.png", "ok.png"]}),
        "{not json",
        "[1, 2]",
        json.dumps({"image": "ok.png", "prefix": "ocr"}),
        json.dumps(good | {"suffix": "   "}),
        json.dumps(good | {"image": "nowhere.png"}),
        json.dumps(good | {"image": "broken.png"}),
        json.dumps(good | {"suffix": "x" * 100}),
        "",
    ]
    path = _write_rows(tmp_path / "m.jsonl", lines)
    with open(path, "ab") as f:
        f.write(b'{"image": "ok.png", "prefix": "\xff", "suffix": "x"}\n')  # not UTF-8
    with caplog.at_level(logging.WARNING, logger="vlmkit.data.datasets"):
        ds = JsonlDataset(path, max_len=50)
    assert len(ds) == 2 and isinstance(ds[1]["image"], list) and len(ds[1]["image"]) == 2
    assert ds.skipped == Counter(bad_json=3, missing_field=1, empty_suffix=1, missing_image=1,
                                 unreadable_image=1, too_long=1)  # fmt: skip
    (record,) = caplog.records
    assert "skipped 8 of 10 rows" in record.getMessage() and "\n" not in record.getMessage()

    lazy = JsonlDataset(path, validate=False)  # images unchecked: a bad one fails when read
    assert len(lazy) == 5 and lazy.skipped == Counter(bad_json=3, missing_field=1, empty_suffix=1)
    with pytest.raises(ImageError):
        lazy[3]


def test_unusable_manifests_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        JsonlDataset(tmp_path / "absent.jsonl")
    path = _write_rows(tmp_path / "bad.jsonl", ["{", json.dumps({"image": "x.png"})])
    with pytest.raises(DataError, match="no usable rows"):
        JsonlDataset(path)


def test_tar_shards_round_trip(data):
    manifest, shard_dir = data
    ref = JsonlDataset(manifest)
    ds = TarShardDataset(shard_dir)
    assert len(ds.shards) == 6  # ceil(42 / 8)
    samples = list(ds)
    assert len(samples) == len(ref)
    for got, want in zip(samples, (ref[i] for i in range(len(ref)))):
        assert _uid(got) == _uid(want) and got["suffix"] == want["suffix"]
        assert got.get("boxes") == want.get("boxes")
        assert np.array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
    assert [s.name for s in TarShardDataset(str(shard_dir / "shard-00000[0-1].tar")).shards] == [
        "shard-000000.tar", "shard-000001.tar"]  # fmt: skip


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_bad_samples_are_skipped_and_corrupt_shards_raise(tmp_path, caplog):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(png, format="PNG")
    meta = json.dumps({"prefix": "ocr", "suffix": "CAT"}).encode()
    _tar(tmp_path / "s.tar", {
        "a/1.png": png.getvalue(), "a/1.json": meta,
        "a/2.png": b"garbage", "a/2.json": meta,
        "a/3.png": png.getvalue(), "a/3.json": json.dumps({"prefix": "ocr", "suffix": ""}).encode(),
        "a/4.json": meta,
    })  # fmt: skip
    ds = TarShardDataset(tmp_path / "s.tar")
    with caplog.at_level(logging.WARNING, logger="vlmkit.data.shards"):
        samples = list(ds)
    assert [s["__key__"] for s in samples] == ["a/1"] and samples[0]["suffix"] == "CAT"
    assert ds.skipped == Counter(undecodable=1, empty_suffix=1, missing_field=1)
    assert len(caplog.records) == 1
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="corrupt"):
        list(TarShardDataset(tmp_path / "cut.tar"))
    with pytest.raises(DataError):
        TarShardDataset(tmp_path / "nothing-*.tar")


def _dataset(kind, data):
    manifest, shards = data
    return JsonlDataset(manifest) if kind == "map" else TarShardDataset(shards)


@pytest.mark.parametrize("kind", ["map", "tar"])
def test_shuffle_is_deterministic_per_seed_and_epoch(kind, data):
    ds = _dataset(kind, data)
    plain = [_uid(s) for s in ds] if kind == "tar" else [_uid(ds[i]) for i in range(len(ds))]
    a = ShuffledStream(ds, buffer_size=10, seed=3)
    epoch0, epoch1 = [_uid(s) for s in a], [_uid(s) for s in a]
    assert a.epoch == 2
    b = ShuffledStream(ds, buffer_size=10, seed=3)
    assert [_uid(s) for s in b] == epoch0
    other = [_uid(s) for s in ShuffledStream(ds, buffer_size=10, seed=4)]
    for order in (epoch0, epoch1, other):
        assert sorted(order) == sorted(plain)
    assert len({tuple(plain), tuple(epoch0), tuple(epoch1), tuple(other)}) == 4


@pytest.mark.parametrize("kind,split", [("map", "sample"), ("tar", "sample"), ("tar", "shard")])
def test_rank_split_is_disjoint_and_covering(kind, data, split):
    ds = _dataset(kind, data)
    world = 3
    streams = [ShuffledStream(ds, 10, seed=1, rank=r, world_size=world, split=split)
               for r in range(world)]  # fmt: skip
    parts = [[_uid(s) for s in stream] for stream in streams]
    flat = [u for p in parts for u in p]
    assert len(flat) == len(set(flat)) == N_SCENES * 3
    assert all(p for p in parts)
    if split == "sample":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_equal_split_gives_every_rank_the_same_count(data):
    ds = _dataset("map", data)  # 42 rows over 4 ranks: 2 dropped per epoch
    parts = [list(ShuffledStream(ds, seed=0, rank=r, world_size=4, equal_split=True))
             for r in range(4)]  # fmt: skip
    assert [len(p) for p in parts] == [10] * 4
    assert len(ShuffledStream(ds, seed=0, rank=0, world_size=4, equal_split=True)) == 10


def make_epochs(stream: ShuffledStream, n: int) -> list[tuple]:
    """Ids of the samples of `n` consecutive `iter` passes (the first may finish an epoch)."""
    return [_uid(s) for _ in range(n) for s in stream]


@pytest.mark.parametrize("kind", ["map", "tar"])
@pytest.mark.parametrize("k", [0, 1, 7, 25, 42, 50])
def test_resume_yields_exactly_the_remaining_samples(kind, k, data):
    ds = _dataset(kind, data)
    make = lambda: ShuffledStream(ds, buffer_size=10, seed=5, rank=1, world_size=2)  # noqa: E731
    full = make_epochs(make(), 3)
    run = make()
    seen, it = [], iter(run)
    while len(seen) < k:
        try:
            seen.append(_uid(next(it)))
        except StopIteration:
            it = iter(run)
    state = json.loads(json.dumps(run.state_dict()))  # must survive a checkpoint round trip
    resumed = make()
    resumed.load_state_dict(state)
    rest = make_epochs(resumed, 3 - state["epoch"])
    assert seen + rest == full


def test_resume_refuses_other_settings(data):
    state = ShuffledStream(_dataset("map", data), seed=1).state_dict()
    with pytest.raises(ConfigError, match="world_size"):
        ShuffledStream(_dataset("map", data), seed=1, rank=0, world_size=2).load_state_dict(state)


def _global_batches(streams: list[ShuffledStream], micro: int, steps: int) -> list[dict]:
    """What `steps` training steps read: per step, {uid: image array} over every rank's
    micro-batch (each rank's stream rolls over epochs, as `BatchStream` does)."""
    def endless(stream):
        while True:
            yield from stream

    its = [endless(s) for s in streams]
    return [{_uid(x): np.asarray(x["image"]) for it in its for x in (next(it) for _ in range(micro))}
            for _ in range(steps)]  # fmt: skip


@pytest.mark.parametrize("new_world", [1, 3])
def test_resplit_resume_continues_the_same_global_batches(new_world, data):
    """2 ranks x 3 rows stop after 3 steps; 1 or 3 ranks resume: every later global batch of 6
    holds the same rows, augmented alike, as an uninterrupted 1-rank run (over an epoch end)."""
    ds, aug = _dataset("map", data), Augment(brightness=0.3, noise=2.0)
    make = lambda r, w: ShuffledStream(ds, seed=4, rank=r, world_size=w, equal_split=True, augment=aug)  # noqa: E731
    reference = _global_batches([make(0, 1)], 6, 12)  # 42 rows: two epochs
    old = [make(r, 2) for r in range(2)]
    assert [b.keys() for b in _global_batches(old, 3, 3)] == [b.keys() for b in reference[:3]]
    states = json.loads(json.dumps([s.state_dict() for s in old]))
    new = [make(r, new_world) for r in range(new_world)]
    for stream in new:
        stream.load_resplit_state(states)
    resumed = _global_batches(new, 6 // new_world, 9)
    for got, want in zip(resumed, reference[3:]):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_resplit_resume_refusals(data):
    tar = ShuffledStream(_dataset("tar", data), seed=1, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="map-style"):
        tar.load_resplit_state([tar.state_dict()])
    ds = _dataset("map", data)
    states = [ShuffledStream(ds, seed=1, rank=r, world_size=2).state_dict() for r in range(2)]
    with pytest.raises(ConfigError, match="seed"):
        ShuffledStream(ds, seed=2).load_resplit_state(states)
    states[1]["position"] = 1  # rank 1 skipped an undecodable row: no common global position
    with pytest.raises(ConfigError, match="different data positions"):
        ShuffledStream(ds, seed=1).load_resplit_state(states)


def test_augmentation_is_photometric_seeded_and_resumable(data):
    ds = _dataset("map", data)
    aug = Augment(brightness=0.3, contrast=0.3, saturation=0.2, noise=2.0)
    run = [np.asarray(s["image"]) for s in ShuffledStream(ds, seed=2, augment=aug)]
    plain = [np.asarray(s["image"]) for s in ShuffledStream(ds, seed=2)]
    assert all(a.shape == p.shape for a, p in zip(run, plain))
    assert sum(not np.array_equal(a, p) for a, p in zip(run, plain)) > len(run) // 2
    resumed = ShuffledStream(ds, seed=2, augment=aug)
    resumed.load_state_dict({**resumed.state_dict(), "position": 9})
    rest = [np.asarray(s["image"]) for s in resumed]
    assert len(rest) == len(run) - 9 and all(np.array_equal(a, b) for a, b in zip(run[9:], rest))
    img = Image.fromarray(np.full((4, 4, 3), 120, np.uint8))
    identity = Augment(brightness=0, contrast=0, saturation=0)
    still = augment_image(img, identity, np.random.default_rng(0))
    assert np.array_equal(np.asarray(still), np.asarray(img))
    with pytest.raises(ConfigError):
        Augment(brightness=1.5)


def test_dataloader_workers(data):
    _, shards = data
    loader = torch.utils.data.DataLoader(TarShardDataset(shards), batch_size=None, num_workers=2)
    keys = [s["__key__"] for s in loader]  # workers split the shards: no duplicates
    assert len(keys) == len(set(keys)) == N_SCENES * 3
    stream = ShuffledStream(_dataset("map", data), seed=0)
    with pytest.raises(ConfigError, match="num_workers=0"):
        list(torch.utils.data.DataLoader(stream, batch_size=4, collate_fn=list, num_workers=1))


def test_a_row_is_measured_once_for_max_len_and_the_budget(data):
    """`length_fn` (a chat row's count processes its images) runs once per row although both
    max_len and the token budget ask for it, and both see the same count."""
    calls = Counter()

    def length(row):
        calls[id(row)] += 1
        return len(row["prefix"]) + len(row["suffix"])

    ds = JsonlDataset(data[0], validate=False, max_len=10_000, length_fn=length, budget=10_000)
    assert len(ds.rows) > 0 and set(calls.values()) == {1}
    assert ds.lengths == [len(r["prefix"]) + len(r["suffix"]) for r in ds.rows]
