"""`vlmkit data curate` end to end: planted bad rows removed, deterministic output, exact resume
after an interruption (a hook raising, and a real SIGKILL of a subprocess), reports, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import main
from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import curate
from vlmkit.data.shards import TarShardDataset
from vlmkit.data.synth import SynthConfig, write_dataset

RULES = ("text_length", "text_repetition", "text_patterns", "image_decode", "image_size", "aspect_ratio",
         "image_uniform", "exact_dedup")  # fmt: skip
CONFIG = ("[run]\nbatch_size = 4\ncheckpoint_rows = 8\n\n[rules.text_length]\nmin_words = 1\nmax_words = 40\n"
          + "".join(f"[rules.{r}]\n" for r in RULES[1:]))


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The caption rows of a synthetic manifest (30 scenes) plus 9 planted bad rows."""
    root = tmp_path_factory.mktemp("curate-data")
    manifest = write_dataset(root, 30, SynthConfig(image_size=64))
    captions = [line for line in manifest.read_text().splitlines() if json.loads(line)["task"] == "caption"]
    manifest.write_text("\n".join(captions) + "\n")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(root / "images" / "blank.png")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / "tiny.png")
    Image.effect_noise((400, 40), 60).convert("RGB").save(root / "images" / "wide.png")
    first = captions[0]
    planted = [{"image": "images/blank.png", "prefix": "caption en", "suffix": "a grey picture"},
               {"image": "images/tiny.png", "prefix": "caption en", "suffix": "a red square"},
               {"image": "images/wide.png", "prefix": "caption en", "suffix": "a wide banner"},
               {"image": "images/000001.png", "prefix": "caption en", "suffix": "visit https://spam.example.com now"},
               {"image": "images/000002.png", "prefix": "caption en", "suffix": "sale sale sale sale sale"},
               {"image": "images/missing.png", "prefix": "caption en", "suffix": "a lost file"}]
    lines = [*(json.dumps(p) for p in planted), first, "{not json", json.dumps({"image": "images/000003.png"})]
    with open(manifest, "a") as f:
        f.write("\n".join(lines) + "\n")
    (root / "curate.toml").write_text(CONFIG)
    return root


def run_cli(*args: str) -> int:
    return main(["data", "curate", *args])


def test_planted_rows_are_removed_and_reported(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(str(data / "manifest.jsonl"), str(out), "--config", str(data / "curate.toml"), "--quiet") == 0
    assert "kept" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    n = len((data / "manifest.jsonl").read_text().splitlines()) - 9  # the synthetic caption rows
    assert n >= 10 and report["rows_in"] == n + 9 and report["unreadable"] == {"bad_json": 1, "missing_text": 1}
    removed = report["removed_by"]
    assert removed == {"text_length": 0, "text_repetition": 1, "text_patterns": 1, "image_decode": 1,
                       "image_size": 1, "aspect_ratio": 1, "image_uniform": 1, "exact_dedup": 1}  # fmt: skip
    assert report["rules"]["image_decode"]["categories"] == {"missing_image": 1, "ok": n + 4}
    assert report["rows_out"] == n
    kept = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(kept) == n and all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in kept)
    html = (out / "report.html").read_text()
    for rule in RULES:
        assert f"id='{rule}'" in html and rule in report["rules"]
    assert (out / "report" / "image_uniform.png").is_file() and "data:image/png;base64," in html
    assert html.count("class='ex removed'") == 7  # the one removed row of each rule that removed one
    for section in html.split("<h2 id=")[1:]:  # 16 examples per rule: removed ones first, then kept
        rule = section.split("'")[1]
        assert section.count("class='ex ") == min(16, report["rules"][rule]["seen"]), rule


def test_two_runs_are_byte_identical(data, tmp_path):
    cfg = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": {r: {} for r in RULES}})
    curate(data / "manifest.jsonl", tmp_path / "a", cfg)
    curate(data / "manifest.jsonl", tmp_path / "b", cfg)
    assert files(tmp_path / "a") == files(tmp_path / "b")


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_is_exact(data, tmp_path):
    cfg = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": {r: {} for r in RULES}})
    curate(data / "manifest.jsonl", tmp_path / "full", cfg)

    def stop(position: int) -> None:
        if position >= 12:  # after the checkpoint at 8 and one more written batch: that one is redone
            raise Interrupt

    with pytest.raises(Interrupt):
        curate(data / "manifest.jsonl", tmp_path / "cut", cfg, on_batch=stop)
    state = json.loads((tmp_path / "cut" / ".curate" / "state.json").read_text())
    assert state["position"] == 8 and not state["done"]
    curate(data / "manifest.jsonl", tmp_path / "cut", cfg)
    assert files(tmp_path / "cut") == files(tmp_path / "full")


_KILL = """
import os, sys
from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import curate
cfg = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8, "shard_size": 7},
                    "rules": {"image_uniform": {}, "exact_dedup": {"on": "image"}, "text_length": {}}})
def kill(position):
    if position >= 22:
        os.kill(os.getpid(), 9)
curate(sys.argv[1], sys.argv[2], cfg, on_batch=kill)
"""


def test_tar_shards_resume_exactly_after_sigkill(tmp_path):
    src = write_dataset(tmp_path / "src", 10, SynthConfig(image_size=64), shards=True, shard_size=16)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.run([sys.executable, "-c", _KILL, str(src), str(tmp_path / "cut")], env=env,
                          capture_output=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "cut" / "report.json").exists()
    cfg = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8, "shard_size": 7},
                        "rules": {"image_uniform": {}, "exact_dedup": {"on": "image"}, "text_length": {}}})
    curate(src, tmp_path / "cut", cfg)
    curate(src, tmp_path / "full", cfg)
    assert files(tmp_path / "cut") == files(tmp_path / "full")
    samples = list(TarShardDataset(tmp_path / "full" / "shards"))
    assert len(samples) == 10  # one row per scene: the other 3 share its image bytes
    assert len(list((tmp_path / "full" / "shards").glob("*.tar"))) == 2


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmkit: error:"), err
    for n in needles:
        assert n in err[0], err[0]


def test_unknown_rule_is_one_line(data, tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[rules.text_lenght]\n")
    assert run_cli(str(data / "manifest.jsonl"), str(tmp_path / "o"), "--config", str(tmp_path / "c.toml")) == 2
    _one_error_line(capsys, "unknown curation rule [rules.text_lenght]")
    assert not (tmp_path / "o").exists()


def test_missing_score_model_is_one_line(data, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(f"[rules.clip_score]\nmodel = '{tmp_path / 'nope'}'\nthreshold = 0.2\n")
    assert run_cli(str(data / "manifest.jsonl"), str(tmp_path / "o"), "--config", str(tmp_path / "c.toml")) == 2
    _one_error_line(capsys, "score model folder", "does not exist")
    assert not (tmp_path / "o").exists()


def test_output_of_another_run_is_refused(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert run_cli(str(data / "manifest.jsonl"), str(out), "--only", "text_length") == 0
    before = files(out)
    capsys.readouterr()
    assert run_cli(str(data / "manifest.jsonl"), str(out), "--only", "image_size") == 2
    _one_error_line(capsys, "holds a curate run of another input or config")
    assert files(out) == before
    assert run_cli(str(data / "manifest.jsonl"), str(out), "--only", "text_length") == 0  # same run: done
    assert files(out) == before


def test_a_corrupt_shard_is_counted_and_the_run_goes_on(tmp_path):
    src = write_dataset(tmp_path / "src", 10, SynthConfig(image_size=64), shards=True, shard_size=16)
    middle = sorted(src.glob("*.tar"))[1]
    middle.write_bytes(middle.read_bytes()[: middle.stat().st_size // 2])  # cut mid-member
    cfg = parse_config({"rules": {"image_uniform": {}, "text_length": {}}})
    report = curate(src, tmp_path / "out", cfg)
    assert report["unreadable"] == {"corrupt_shard": 1}
    third = len(list(TarShardDataset(sorted(src.glob("*.tar"))[2])))
    assert third == 8 and report["rows_in"] >= 16 + 1 + third  # the shard after the bad one was read
    assert report["rows_out"] == report["rows_in"] - 1


def _stderr_on_a_tty(args: list[str]) -> str:
    """Run the CLI with stderr on a pseudo-terminal; what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal's width
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "vlmkit", "data", "curate", *args], stderr=slave,
                            stdout=subprocess.DEVNULL, env=env)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_tty_only(data, tmp_path, capsys):
    shown = _stderr_on_a_tty([str(data / "manifest.jsonl"), str(tmp_path / "a"), "--only", "text_length"])
    assert "curate:" in shown and "rows/s" in shown and "<00:" in shown  # rate and ETA
    assert "rows/s" not in _stderr_on_a_tty([str(data / "manifest.jsonl"), str(tmp_path / "b"), "--quiet"])
    assert run_cli(str(data / "manifest.jsonl"), str(tmp_path / "c"), "--only", "text_length") == 0
    assert "rows/s" not in capsys.readouterr().err  # not a terminal: no bar


def test_a_folder_holding_other_files_is_refused(data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert run_cli(str(data / "manifest.jsonl"), str(out), "--only", "text_length") == 2
    _one_error_line(capsys, "is not empty and holds no curate run")
    assert files(out) == {"mine.txt": b"keep me"}


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(data, tmp_path):
    cfg = parse_config({"rules": {"text_length": {}}})
    (tmp_path / "o" / ".curate" / "scores").mkdir(parents=True)  # what a kill while fitting leaves
    (tmp_path / "o" / ".curate" / "scores" / "text_length.f32").write_bytes(b"\0" * 12)
    curate(data / "manifest.jsonl", tmp_path / "o", cfg)
    curate(data / "manifest.jsonl", tmp_path / "fresh", cfg)
    assert files(tmp_path / "o") == files(tmp_path / "fresh")


def test_bench_curate_writes_a_renderable_results_file(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    out = tmp_path / "curate.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_curate.py"), "--scenes", "6", "--reps", "1",
                           "--threads", "1", "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["loadavg_start"] and data["meta"]["loadavg_end"]
    assert [r["variant"] for r in data["rows"]] == ["heuristic rules", "+ clip_score", "+ phash + embed_dedup"]
    assert all(r["rows"] == 24 and r["rows/s"] > 0 for r in data["rows"])
    table = subprocess.run([sys.executable, str(root / "benchmarks" / "render_table.py"), str(out)],
                           capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert table.returncode == 0 and "| + clip_score | 24 |" in table.stdout


def test_every_stateful_rule_resumes_exactly(data, tmp_path):
    """Model scores, the FAISS index, k-means counts, pHash bands and MetaCLIP draws all survive
    an interruption: the resumed output equals the uninterrupted one, byte for byte."""
    pytest.importorskip("faiss")
    pytest.importorskip("imagehash")
    from vlmkit.weights.create import create_checkpoint

    model = str(create_checkpoint(tmp_path / "siglip", "debug", family="siglip"))
    rules = {"clip_score": {"model": model, "top_fraction": 0.9, "fit_rows": 16},
             "embed_dedup": {"model": model, "threshold": 0.999}, "phash_dedup": {"max_distance": 2},
             "kmeans_balance": {"model": model, "k": 3, "cap": 4, "fit_rows": 20},
             "concept_balance": {"concepts": ["red", "green", "blue", "yellow", "purple"], "cap": 4}}
    cfg = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": rules})
    curate(data / "manifest.jsonl", tmp_path / "full", cfg)

    def stop(position: int) -> None:
        if position >= 20:  # checkpoint at 16, rows 16..19 written, then the interruption
            raise Interrupt

    with pytest.raises(Interrupt):
        curate(data / "manifest.jsonl", tmp_path / "cut", cfg, on_batch=stop)
    assert json.loads((tmp_path / "cut" / ".curate" / "state.json").read_text())["position"] == 16
    curate(data / "manifest.jsonl", tmp_path / "cut", cfg)
    assert files(tmp_path / "cut") == files(tmp_path / "full")
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["removed_by"]["kmeans_balance"] > 0 and report["rows_out"] > 0
    assert report["removed_by"]["embed_dedup"] > 0 and report["removed_by"]["concept_balance"] > 0
    assert sum(report["rules"]["kmeans_balance"]["categories"].values()) == report["rules"]["kmeans_balance"]["seen"]
