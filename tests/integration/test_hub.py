"""Hub names (`--model org/name[@revision]`) against a Hugging Face cache folder built here, laid
out as huggingface_hub lays it out (blobs/, refs/, snapshots/<commit>/ of relative symlinks) and
checked with huggingface_hub's own `scan_cache_dir`. Nothing here reaches the network: the tests
run with HF_HUB_OFFLINE=1 (in the environment of the subprocesses, and patched into
huggingface_hub's constants for the in-process calls), except one whose Hub endpoint is a local
port that refuses every connection."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

huggingface_hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")

from vlmkit.errors import CheckpointError  # noqa: E402
from vlmkit.weights import hub  # noqa: E402
from vlmkit.weights.create import create_checkpoint  # noqa: E402
from vlmkit.weights.registry import find_model, resolve_model  # noqa: E402
from vlmkit.weights.safetensors_io import write_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REPO = "vlmkit-test/tiny-pali"
COMMIT_MAIN, COMMIT_V1, COMMIT_SHARDED = "a" * 40, "b" * 40, "d" * 40


def add_snapshot(cache: Path, repo: str, commit: str, folder: Path, refs: tuple[str, ...] = ()) -> Path:
    """Put `folder`'s files into `cache` as snapshot `commit` of model `repo`, as huggingface_hub's
    file_download does: each file a blob named by its hash, the snapshot a tree of relative
    symlinks to the blobs, each ref (branch / tag) a file holding the commit hash."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / commit
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = storage / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()  # an LFS file's etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(src.read_bytes())
        pointer = snap / src.relative_to(folder)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snap


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny random PaliGemma checkpoints (seeds 0 and 1) and a cache holding them as main / v1."""
    base = tmp_path_factory.mktemp("hub")
    seed0, seed1 = create_checkpoint(base / "seed0", seed=0), create_checkpoint(base / "seed1", seed=1)
    cache = base / "cache"
    add_snapshot(cache, REPO, COMMIT_MAIN, Path(seed0), refs=("main",))
    add_snapshot(cache, REPO, COMMIT_V1, Path(seed1), refs=("v1",))
    sharded = base / "sharded"  # the seed-0 weights as two shards plus an index
    shutil.copytree(seed0, sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    write_state_dict(load_file(Path(seed0) / "model.safetensors"), sharded, max_shard_bytes=200_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    add_snapshot(cache, REPO, COMMIT_SHARDED, sharded, refs=("sharded",))
    pickle_only = base / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((Path(seed0) / "config.json").read_text())
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    add_snapshot(cache, "vlmkit-test/pickle-only", "c" * 40, pickle_only, refs=("main",))
    return {"cache": cache, "seed0": Path(seed0), "seed1": Path(seed1)}


@pytest.fixture(autouse=True)
def offline(checkpoints, monkeypatch):
    """This process and its children see only the test cache, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(checkpoints["cache"]))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(checkpoints["cache"]))


def _vlmkit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cache_layout_is_the_hubs(checkpoints):
    """huggingface_hub's own cache scanner reads our cache as three model repos with their refs."""
    info = huggingface_hub.scan_cache_dir(checkpoints["cache"])
    assert not info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {REPO, "vlmkit-test/pickle-only"} and repos[REPO].repo_type == "model"
    refs = {rev.commit_hash: set(rev.refs) for rev in repos[REPO].revisions}
    assert refs == {COMMIT_MAIN: {"main"}, COMMIT_V1: {"v1"}, COMMIT_SHARDED: {"sharded"}}


def test_generate_with_a_hub_name_offline_equals_the_folder(checkpoints, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    args = ["--image", str(image), "--task", "detect", "--objects", "square", "--json", "--max-new-tokens", "12"]
    by_name = _vlmkit("generate", "--model", REPO, *args)
    assert by_name.returncode == 0, by_name.stderr
    by_folder = _vlmkit("generate", "--model", str(checkpoints["seed0"]), *args)
    assert by_folder.returncode == 0, by_folder.stderr
    drop = ("timing",)
    a, b = json.loads(by_name.stdout), json.loads(by_folder.stdout)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_revision_picks_its_snapshot(checkpoints):
    snaps = checkpoints["cache"] / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert resolve_model(REPO) == snaps / COMMIT_MAIN
    assert resolve_model(f"{REPO}@main") == snaps / COMMIT_MAIN
    assert resolve_model(f"{REPO}@v1") == snaps / COMMIT_V1
    assert resolve_model(f"{REPO}@{COMMIT_V1}") == snaps / COMMIT_V1
    import vlmkit

    assert vlmkit.load(f"{REPO}@v1").folder == snaps / COMMIT_V1
    # the snapshot's weights are the v1 checkpoint's, read through the blob symlinks
    assert (resolve_model(f"{REPO}@v1") / "model.safetensors").read_bytes() == \
        (checkpoints["seed1"] / "model.safetensors").read_bytes()


def test_missing_repo_or_revision_offline_is_one_line(checkpoints):
    for name in ("vlmkit-test/absent", f"{REPO}@v9"):
        r = _vlmkit("info", "--model", name)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vlmkit: error: Hub model "), r.stderr
        assert name in lines[0] and "HF_HUB_OFFLINE" in lines[0] and "not in the Hugging Face cache" in lines[0]


def test_unreachable_hub_uses_the_cache_or_says_so(checkpoints, monkeypatch):
    """Not offline, but the Hub endpoint is a local port that refuses connections (bound, never
    listening): a cached repo still loads, an uncached one is one line. No traffic leaves the host."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        cached = _vlmkit("info", "--model", REPO, "--json")
        assert cached.returncode == 0, cached.stderr
        missing = _vlmkit("info", "--model", "vlmkit-test/absent")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"vlmkit: error: cannot reach the Hugging Face Hub for vlmkit-test/absent, and it is not in the cache "
        f"({checkpoints['cache']}); check the connection (or HF_ENDPOINT), or pre-download it"]


def test_pickle_only_snapshot_is_refused(checkpoints):
    r = _vlmkit("info", "--model", "vlmkit-test/pickle-only")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "vlmkit: error: Hub model vlmkit-test/pickle-only has only pickle weights (pytorch_model.bin); vlmkit "
        "loads safetensors only (loading pickle can run code): pick a revision or repo with model.safetensors, "
        "or convert the weights"]


def test_local_folder_and_bundled_name_win(checkpoints, tmp_path, monkeypatch):
    local = tmp_path / REPO
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model(REPO) == Path(REPO)  # the folder of that name, not the cache's snapshot
    assert find_model("vlmkit-shapes-tiny") == resolve_model(None)
    assert find_model("base-patch16-224") is None  # a preset name: neither, nothing fetched
    with pytest.raises(CheckpointError, match="neither a folder nor a bundled model"):
        resolve_model(tmp_path / "nope")


def test_hub_name_syntax():
    assert hub.parse_hub_name("google/paligemma-3b-pt-224") == ("google/paligemma-3b-pt-224", None)
    assert hub.parse_hub_name("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for not_a_name in ("name", "a/b/c", "./a/b", "/abs/path", "org/name@", "org--x/name", "org/na..me"):
        assert hub.parse_hub_name(not_a_name) is None, not_a_name


def test_only_safetensors_and_config_files_are_fetched():
    """The allow patterns, applied by huggingface_hub's own filter, keep what vlmkit reads only."""
    from huggingface_hub.utils import filter_repo_objects

    wanted = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
              "preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja",
              "generation_config.json"]
    unwanted = ["pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "model.pt", "weights.pth", "model.ckpt",
                "flax_model.msgpack", "tf_model.h5", "consolidated.safetensors", "README.md", "model.onnx"]
    kept = set(filter_repo_objects(wanted + unwanted, allow_patterns=list(hub.ALLOW_PATTERNS)))
    assert kept == set(wanted)


def test_snapshot_download_is_asked_for_the_allowed_files_only(monkeypatch, checkpoints):
    """`snapshot` passes the allow patterns and the revision to huggingface_hub unchanged."""
    seen = {}

    def fake(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        return str(checkpoints["seed0"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert hub.snapshot("org/x", "v2") == checkpoints["seed0"]
    assert seen == {"repo_id": "org/x", "revision": "v2", "allow_patterns": list(hub.ALLOW_PATTERNS)}


def test_a_sharded_snapshot_loads_through_its_index(checkpoints):
    import vlmkit

    sharded, whole = vlmkit.load(f"{REPO}@sharded"), vlmkit.load(checkpoints["seed0"])
    assert (sharded.folder / "model.safetensors.index.json").is_file()
    a, b = sharded.model.state_dict(), whole.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
