"""The `embed_dedup` index (`vlmkit.curation.embed_index`): every kind and storage finds planted
near-duplicates and keeps the other rows, the IVF / sq8 warm-up is exact, save + load resumes as an
uninterrupted run, thread counts do not change the answers, config errors are one line."""

from __future__ import annotations

import numpy as np
import pytest

from vlmkit.curation.rules import build_config
from vlmkit.errors import ConfigError

faiss = pytest.importorskip("faiss")

from vlmkit.curation.embed_index import EmbedIndex, IndexConfig, dedup_batch  # noqa: E402

CASES = [("flat", "float32"), ("flat", "sq8"), ("ivf", "float32"), ("ivf", "float16"), ("ivf", "sq8"),
         ("hnsw", "float32"), ("hnsw", "sq8")]  # fmt: skip


def planted(n: int = 1500, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows around 8 centres (cosine within a centre ~0.3) and, at known places, 100 copies
    of earlier rows at cosine >= ~0.95; returns (x [n, dim] float32, is_copy [n] bool)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 1.5 * rng.standard_normal((n, dim))
    copies = np.sort(rng.choice(np.arange(200, n), 100, replace=False))
    originals = np.setdiff1d(np.arange(n), copies)
    for c in copies:
        src = rng.choice(originals[originals < c])
        x[c] = x[src] + 0.25 * np.linalg.norm(x[src]) * rng.standard_normal(dim) / np.sqrt(dim)
    is_copy = np.zeros(n, bool)
    is_copy[copies] = True
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), is_copy


def config(kind: str, storage: str = "float32", **kw) -> IndexConfig:
    return IndexConfig(index=kind, storage=storage, **{"nlist": 8, "nprobe": 3, "train_rows": 300, "hnsw_m": 8} | kw)


def run(index: EmbedIndex, x: np.ndarray, batch: int = 64, threshold: float = 0.9) -> list[bool]:
    return [k for i in range(0, len(x), batch) for k in dedup_batch(index, x[i : i + batch], threshold)]


@pytest.mark.parametrize("kind,storage", CASES)
def test_each_index_finds_the_planted_copies_and_keeps_the_rest(kind, storage):
    x, is_copy = planted()
    index = EmbedIndex(config(kind, storage))
    keep = np.array(run(index, x))
    assert np.array_equal(~keep, is_copy)
    assert index.ntotal == keep.sum() and index.trained
    assert index.config.factory() in {"Flat", "SQ8", "IVF8,Flat", "IVF8,SQfp16", "IVF8,SQ8", "HNSW8", "HNSW8,SQ8"}


def test_a_copy_within_one_batch_is_found():
    x, _ = planted()
    both = np.concatenate([x[:10], x[3:4]])  # row 10 repeats row 3 in the same batch
    assert dedup_batch(EmbedIndex(config("flat")), both, 0.9) == [True] * 10 + [False]


def test_ivf_searches_exactly_until_trained_on_the_first_train_rows():
    x, _ = planted()
    index = EmbedIndex(config("ivf", train_rows=400))
    run(index, x[:300])
    assert not index.trained and type(index.index).__name__ == "IndexFlatIP"
    run(index, x[300:])
    assert index.trained and type(index.index).__name__ == "IndexIVFFlat"
    assert faiss.extract_index_ivf(index.index).nprobe == 3


@pytest.mark.parametrize("kind,storage", [("ivf", "sq8"), ("hnsw", "float32"), ("flat", "float32")])
@pytest.mark.parametrize("cut", [128, 640])  # during the warm-up, after training
def test_save_and_load_resumes_as_an_uninterrupted_run(kind, storage, cut, tmp_path):
    x, _ = planted()
    whole = run(EmbedIndex(config(kind, storage)), x)
    first = EmbedIndex(config(kind, storage))
    head = run(first, x[:cut])
    first.save(tmp_path)
    resumed = EmbedIndex(config(kind, storage))
    resumed.load(tmp_path)
    assert resumed.ntotal == first.ntotal and resumed.trained == first.trained
    assert head + run(resumed, x[cut:]) == whole


@pytest.mark.parametrize("kind,storage", [("ivf", "sq8"), ("hnsw", "float32")])
def test_the_thread_count_does_not_change_the_kept_rows(kind, storage):
    x, _ = planted(seed=1)
    before = faiss.omp_get_max_threads()
    try:
        answers = []
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            index = EmbedIndex(config(kind, storage, nprobe=1, hnsw_m=4, ef_search=4))
            answers.append((run(index, x, threshold=0.5), index.best(x[:50]).tolist()))
    finally:
        faiss.omp_set_num_threads(before)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("table,message", [
    ({"index": "annoy"}, "embed_dedup.index must be flat, ivf or hnsw, got 'annoy'"),
    ({"storage": "int4"}, "embed_dedup.storage must be float32, float16 or sq8, got 'int4'"),
    ({"nlist": 16, "nprobe": 32}, r"embed_dedup.nprobe must be in \[1, 16\], got 32"),
    ({"nlist": 2048, "train_rows": 1000}, r"embed_dedup.train_rows must be in \[2048, inf\], got 1000"),
    ({"hnsw_m": 1}, r"embed_dedup.hnsw_m must be in \[2, 256\], got 1"),
    ({"ef_search": 0}, r"embed_dedup.ef_search must be in \[1, inf\], got 0"),
    ({"nlist": "many"}, r"\[rules.embed_dedup\] nlist = 'many' is not of type int"),
    ({"nprobes": 4}, r"unknown key 'nprobes' in \[rules.embed_dedup\]"),
])  # fmt: skip
def test_index_config_errors_are_one_line_naming_the_field(table, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_config("embed_dedup", {"model": "m"} | table)
    assert "\n" not in str(e.value)


def test_train_rows_may_be_below_nlist_for_an_index_that_needs_no_cells():
    cfg = build_config("embed_dedup", {"model": "m", "index": "hnsw", "nlist": 4096, "train_rows": 1000})
    assert cfg.factory() == "HNSW32"
