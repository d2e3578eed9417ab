"""Text-only and interleaved mixture sources as tar shards: the same samples as the manifest of the
same rows, draws in the stated proportions and exact resume over them, and bad samples (a missing
or escaping image name, a link member, a malformed document, a truncated shard) as bad rows named
by shard and key."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.mixture import MixtureStream, parse_mixture
from vlmkit.errors import DataError
from vlmkit.training.collate import BatchStream
from vlmkit.training.mixture_rows import DocumentRows, TextRows
from vlmkit.training.mixture_shards import ShardDocumentRows, ShardTextRows, mixture_reader

TEXTS = [{"text": f"story number {i}"} for i in range(6)] + [{"prefix": "continue", "suffix": "the end"}]


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]], links: dict[str, str] | None = None) -> Path:
    """A tar of `samples` ((key, {extension: bytes}), members named KEY.EXT in order) plus
    symbolic links {member name: target}."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def docs(n: int) -> list[dict]:
    """OBELICS-style documents naming images by extension and by file name."""
    return [{"texts": [f"doc {i} starts", None, "then", None], "images": [None, "0.png", None, f"d{i:03d}.1.png"]}
            for i in range(n)]


def doc_sources(tmp_path: Path, n: int = 5) -> tuple[Path, Path]:
    """The same documents as two tar shards and as a manifest with image files."""
    colours = [((40 * i) % 256, 10, 200 - 20 * i) for i in range(n)]
    rows = []
    for i, row in enumerate(docs(n)):
        for j in (0, 1):
            Image.open(io.BytesIO(png(colours[(i + j) % n]))).save(tmp_path / f"d{i}_{j}.png")
        rows.append({"texts": row["texts"], "images": [None, f"d{i}_0.png", None, f"d{i}_1.png"]})
    manifest = tmp_path / "docs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = [(f"d{i:03d}", {"json": json.dumps(row).encode(), "0.png": png(colours[i]),
                              "1.png": png(colours[(i + 1) % n])}) for i, row in enumerate(docs(n))]  # fmt: skip
    (tmp_path / "docs").mkdir()
    write_tar(tmp_path / "docs" / "docs-000.tar", samples[:3])
    write_tar(tmp_path / "docs" / "docs-001.tar", samples[3:])
    return manifest, tmp_path / "docs"


def text_sources(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "text.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in TEXTS))
    samples = [(f"t{i:03d}", {"txt": r["text"].encode()} if i % 2 and "text" in r else {"json": json.dumps(r).encode()})
               for i, r in enumerate(TEXTS)]  # .txt members and .json rows mixed
    return manifest, write_tar(tmp_path / "text.tar", samples)


def same(a, b) -> bool:
    """Samples equal, images compared by pixels."""
    pix = [np.asarray(i).tolist() for i in a["images"]], [np.asarray(i).tolist() for i in b["images"]]
    return {k: v for k, v in a.items() if k != "images"} == {k: v for k, v in b.items() if k != "images"} \
        and pix[0] == pix[1]  # fmt: skip


def test_tar_samples_equal_the_manifest_rows(tmp_path):
    text_manifest, text_tar = text_sources(tmp_path)
    doc_manifest, doc_dir = doc_sources(tmp_path)
    for plain, shards in ((TextRows(text_manifest, chat=True), ShardTextRows(text_tar, chat=True)),
                          (DocumentRows(doc_manifest, chat=True), ShardDocumentRows(doc_dir, chat=True))):
        assert len(plain) == len(shards) > 0 and not shards.skipped
        assert all(same(plain[i], shards[i]) for i in range(len(plain)))
    assert len(ShardDocumentRows(doc_dir, chat=True)[0]["images"]) == 2
    assert mixture_reader("text", str(text_tar)) is ShardTextRows
    assert mixture_reader("interleaved", str(doc_dir / "*.tar")) is ShardDocumentRows
    assert mixture_reader("interleaved", str(doc_manifest)) is DocumentRows


def _stream(datasets, weights, seed=0):
    streams = [BatchStream(ShuffledStream(d, seed=i), None, 2, collate_fn=lambda s: s) for i, d in enumerate(datasets)]
    return MixtureStream(streams, list(weights), seed)


def _key(batch) -> list:
    return [json.dumps(s.get("document") or [s.get("prefix"), s.get("suffix")]) for s in batch]


def test_proportions_and_exact_resume_over_tar_sources(tmp_path):
    text_manifest, text_tar = text_sources(tmp_path)
    doc_manifest, doc_dir = doc_sources(tmp_path)
    shards = [ShardTextRows(text_tar, chat=True), ShardDocumentRows(doc_dir, chat=True, validate=False)]
    plain = [TextRows(text_manifest, chat=True), DocumentRows(doc_manifest, chat=True)]
    mix, n = _stream(shards, (0.7, 0.3)), 10_000
    with_images = [bool(mix.next_batch()[0]["images"]) for _ in range(n)]  # interleaved micro-batches
    assert abs(np.mean(with_images) - 0.3) < 0.01
    mix, reference = _stream(shards, (0.7, 0.3)), _stream(plain, (0.7, 0.3))
    expected = [_key(mix.next_batch()) for _ in range(24)]
    assert expected == [_key(reference.next_batch()) for _ in range(24)]  # the manifests' batches
    first = _stream(shards, (0.7, 0.3))
    got = [_key(first.next_batch()) for _ in range(9)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _stream([ShardTextRows(text_tar, chat=True), ShardDocumentRows(doc_dir, chat=True)], (0.7, 0.3))
    resumed.load_state_dict(state)
    got += [_key(resumed.next_batch()) for _ in range(15)]
    assert got == expected


def test_parse_mixture_takes_tar_text_and_interleaved_sources(tmp_path):
    _, text_tar = text_sources(tmp_path)
    _, doc_dir = doc_sources(tmp_path)
    value = json.dumps([{"source": str(text_tar), "weight": 1, "kind": "text"},
                        {"source": str(doc_dir / "*.tar"), "weight": 1, "kind": "interleaved"}])
    assert [s.kind for s in parse_mixture(value)] == ["text", "interleaved"]


def bad_samples() -> list[tuple[str, dict[str, bytes]]]:
    good = {"json": json.dumps(docs(1)[0] | {"images": [None, "0.png", None, "1.png"]}).encode(),
            "0.png": png((1, 2, 3)), "1.png": png((4, 5, 6))}  # fmt: skip
    def named(*images) -> bytes:
        return json.dumps(json.loads(good["json"]) | {"images": list(images)}).encode()

    return [("good", good),
            ("gone", good | {"json": named(None, "0.png", None, "2.png")}),
            ("escape", good | {"json": named(None, "../d000.0.png", None, "/etc/passwd")}),
            ("broken", good | {"json": b'{"texts": ["a", null'}),
            ("nojson", {"0.png": good["0.png"]}),
            ("badpng", good | {"1.png": b"not a png"})]  # fmt: skip


def test_bad_samples_are_counted_and_named_by_shard_and_key(tmp_path):
    shard = write_tar(tmp_path / "bad.tar", bad_samples(), links={"linked.0.png": "/etc/hostname"})
    ds = ShardDocumentRows(shard, chat=True)
    assert len(ds) == 1 and ds.rows[0]["images"] == [None, "0.png", None, "1.png"]
    assert dict(ds.skipped) == {"missing_member": 3, "bad_json": 1, "unreadable_image": 1, "link_member": 1}
    assert ds.first_bad == f"{shard}:gone names image '2.png', which is not a member of its sample"
    cases = {"gone": "names image '2.png', which is not a member",
             "escape": "names image '../d000.0.png', which is not a member",
             "broken": "is not valid JSON", "nojson": "has no .json member",
             "badpng": "has image member badpng.1.png, which cannot be read"}  # fmt: skip
    for key, what in cases.items():
        samples = [s for s in bad_samples() if s[0] in ("good", key)]
        with pytest.raises(DataError) as e:
            ShardDocumentRows(write_tar(tmp_path / f"{key}.tar", samples), chat=True, bad_rows="error")
        assert str(e.value).startswith(f"{tmp_path / key}.tar:{key} {what}") and "\n" not in str(e.value)
    text = write_tar(tmp_path / "t.tar", [("a", {"txt": b"fine"}), ("b", {"txt": b"x", "png": png((0, 0, 0))})])
    assert dict(ShardTextRows(text, chat=True).skipped) == {"has_image": 1}


def test_a_truncated_shard_is_one_line(tmp_path):
    shard = write_tar(tmp_path / "cut.tar", [(f"g{i}", bad_samples()[0][1]) for i in range(3)])
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(DataError, match=r"tar shard .*cut.tar is corrupt") as e:
        ShardDocumentRows(shard, chat=True)
    assert "\n" not in str(e.value)
