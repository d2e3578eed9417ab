"""Bad-input corpus, part 4: output targets (never destroy user data), system errors at the boundary,
and a closed or full stdout (subprocesses: the only cases that need a real interpreter exit)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.bad_inputs_common import debug_model, image, run_bad, snapshot  # noqa: F401
from vlmkit.cli import main
from vlmkit.outputs import _HOST

ROOT = Path(__file__).resolve().parents[2]


def _user_folder(path: Path) -> Path:
    """A folder holding a user's own files (that no command may delete or change)."""
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "todo.txt").write_text("mine\n")
    (path / "config.json").write_text('{"mine": true}')
    return path


TARGETS = {  # name: (argv with {t} for the target, how the target is made, cause)
    "create_non_empty": (["create", "{t}"], "user_folder", "is not empty; pass --force"),
    "create_over_file": (["create", "{t}"], "file", "is an existing file"),
    "create_over_file_force": (["create", "{t}", "--force"], "file", "is an existing file"),
    "create_under_file": (["create", "{t}/sub"], "file", "is a file, not a folder"),
    "create_dot": (["create", "."], "cwd", "current folder or one of its parents"),
    "create_dotdot": (["create", ".."], "cwd", "current folder or one of its parents"),
    "create_cwd_absolute_force": (["create", "{cwd}", "--force"], "cwd", "current folder"),
    "create_ancestor_of_cwd": (["create", "{t}", "--force"], "ancestor", "current folder or one of its parents"),
    "synth_non_empty": (["data", "synth", "{t}", "--num-scenes", "1"], "user_folder", "is not empty"),
    "synth_under_file": (["data", "synth", "{t}/x", "--num-scenes", "1"], "file", "is a file, not a folder"),
    "synth_dot": (["data", "synth", ".", "--num-scenes", "1"], "cwd", "current folder"),
    "demo_non_empty": (["demo", "--out", "{t}", "--num-scenes", "1"], "user_folder", "is not empty"),
    "demo_over_file": (["demo", "--out", "{t}", "--num-scenes", "1"], "file", "is an existing file"),
    "draw_existing_file": (["generate", "--image", "{img}", "--prompt", "x", "--draw", "{t}"], "file", "exists; pass --force"),
    "draw_under_file": (["generate", "--image", "{img}", "--prompt", "x", "--draw", "{t}/o.png"], "file", "is a file, not a folder"),
    "draw_is_folder": (["generate", "--image", "{img}", "--prompt", "x", "--draw", "{t}", "--force"], "user_folder", "is an existing folder"),
    "experiment_non_empty": (["experiment", "objectives", "--size", "small", "--out", "{t}"], "user_folder", "is not empty"),
    "experiment_dot": (["experiment", "objectives", "--out", "."], "cwd", "current folder"),
    "eval_json_exists": (["eval", "--data", "{t}", "--task", "vqa", "--json", "{t}"], "file", "exists; pass --force"),
    "eval_json_under_file": (["eval", "--data", "{t}", "--task", "vqa", "--json", "{t}/r.json"], "file", "is a file, not a folder"),
}


@pytest.mark.parametrize("case", sorted(TARGETS))
def test_bad_output_target(case, debug_model, image, tmp_path, monkeypatch, capsys):
    argv, make, cause = TARGETS[case]
    target = tmp_path / "target"
    cwd = tmp_path / "work"
    cwd.mkdir()
    if make == "user_folder":
        _user_folder(target)
    elif make == "file":
        target.write_text("precious\n")
    elif make == "ancestor":
        target, cwd = tmp_path, _user_folder(tmp_path / "a") / "b"
        cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = [a.format(t=target, cwd=cwd, img=image) for a in argv]
    if argv[0] in ("generate", "demo"):
        argv[1:1] = ["--model", str(debug_model)]
    run_bad(capsys, argv, cause, tmp_path, debug_model)


@pytest.mark.parametrize("command", ["create", "synth"])
def test_force_keeps_foreign_files(command, tmp_path, capsys):
    """--force writes into a user's folder: our files replace same-named ones, the rest stays as it was."""
    target = _user_folder(tmp_path / "target")
    todo = target / "notes" / "todo.txt"
    before = snapshot(todo)
    argv = ["create", str(target), "--force"] if command == "create" else [
        "data", "synth", str(target), "--num-scenes", "2", "--force"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    assert snapshot(todo) == before and todo.read_text() == "mine\n"
    written = "model.safetensors" if command == "create" else "manifest.jsonl"
    assert (target / written).is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    if command == "create":  # config.json is ours: replaced
        assert '"model_type": "paligemma"' in (target / "config.json").read_text()


def test_force_refuses_to_mix_with_a_stale_shard_index(debug_model, tmp_path, capsys):
    """An old sharded save's index would shadow the new single file: refused, not silently mixed."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    run_bad(capsys, ["create", target, "--force"], "left from an earlier write", tmp_path, folders=False)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_empty_folder_is_a_fine_target(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["create", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "config.json").is_file()


def test_disk_full_while_writing(tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of `create`: one line naming the file; no temp folder left behind."""
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr("vlmkit.weights.safetensors_io.save_file", full)
    run_bad(capsys, ["create", tmp_path / "m"], "no space left on device [ENOSPC]", tmp_path, folders=False)
    assert list(tmp_path.iterdir()) == []


def test_permission_denied(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: folder permissions do not stop writes")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    run_bad(capsys, ["create", locked / "m"], "permission denied", tmp_path)


def test_out_of_memory(debug_model, image, tmp_path, monkeypatch, capsys):
    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr("vlmkit.data.processor.preprocess_images", no_memory)
    run_bad(capsys, ["generate", "--model", debug_model, "--image", image, "--prompt", "x"], "out of memory",
            tmp_path, debug_model)


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Not a user error: traceback, then one line saying it is a bug and how to report it; exit 1."""
    def broken(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr("vlmkit.cli.cmd_info", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops" in err
    from vlmkit import __version__

    assert f"this is a bug in vlmkit {__version__}" in err.strip().splitlines()[-1]


def _vlmkit(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vlmkit", *args], env=env, stderr=subprocess.PIPE,
                          text=True, timeout=120, **kw)


@pytest.mark.parametrize("how", ["read_end_closed", "fd_closed"])
def test_closed_stdout_is_a_quiet_exit(how, debug_model):
    """`vlmkit info | head -c0` and `vlmkit info >&-`: exit 0, nothing on stderr."""
    args = ["info", "--model", str(debug_model), "--json"]
    if how == "read_end_closed":
        read, write = os.pipe()
        os.close(read)  # every write now fails with EPIPE
        try:
            proc = _vlmkit(args, stdout=write)
        finally:
            os.close(write)
    else:
        proc = _vlmkit(args, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    assert (proc.returncode, proc.stderr) == (0, "")


def test_full_stdout_is_one_line(debug_model):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        proc = _vlmkit(["info", "--model", str(debug_model)], stdout=full)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vlmkit: error: No space left on device [ENOSPC] (<stdout>)"


def _killed_before_rename(argv: list[str]) -> None:
    """Forked child: run the command, SIGKILLed once its output is written but not yet renamed."""
    import vlmkit.outputs

    def kill(self):
        os.kill(os.getpid(), signal.SIGKILL)

    vlmkit.outputs._AtomicFolder._commit = kill
    os._exit(main(argv))


KILLED_WRITES = {
    "create_force": ["create", "{t}", "--force"],
    "synth_force": ["data", "synth", "{t}", "--num-scenes", "2", "--force"],
    "synth": ["data", "synth", "{t}", "--num-scenes", "2"],
}


@pytest.mark.parametrize("case", sorted(KILLED_WRITES))
def test_sigkill_mid_write_leaves_a_temp_the_next_write_removes(case, tmp_path, capsys):
    """SIGKILL of a real process mid-write: the target is as before (the user's files untouched) and
    a hidden `.target.tmp-PID-...` is left; the next write of the same target removes it (its PID is
    dead), and only it."""
    target = tmp_path / "target"
    if "force" in case:
        _user_folder(target)
    args = [a.format(t=target) for a in KILLED_WRITES[case]]
    before = snapshot(target, folders=False)
    proc = multiprocessing.get_context("fork").Process(target=_killed_before_rename, args=(args,))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(f".target.tmp-{proc.pid}-")]
    assert len(left) == 1 and left[0].is_dir() and any(left[0].iterdir())
    assert snapshot(target, folders=False) == before
    live = tmp_path / f".target.tmp-{os.getpid()}-{_HOST}-live"  # a running writer's
    other = tmp_path / f".elsewhere.tmp-{proc.pid}-{_HOST}-x"  # another target's
    live.mkdir()
    other.mkdir()
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""
    assert not left[0].exists() and live.is_dir() and other.is_dir()
    assert (target / ("model.safetensors" if case == "create_force" else "manifest.jsonl")).is_file()
    if "force" in case:
        assert (target / "notes" / "todo.txt").read_text() == "mine\n"


def test_refused_write_leaves_even_dead_leftovers_alone(tmp_path, capsys):
    """A write refused up front (non-empty target, no --force) changes nothing, leftovers included."""
    target = _user_folder(tmp_path / "target")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    (tmp_path / f".target.tmp-{pid}-{_HOST}-abc").mkdir()
    run_bad(capsys, ["create", target], "is not empty; pass --force", tmp_path)


EXPERIMENT_STALE = {  # what an earlier run left in --out: (relative path, kind), cause
    "checkpoint_of_another_size": (("coca/checkpoints/step_000500", "folder"),
                                   "left from an earlier run with another step count"),
    "run_folder_is_a_file": (("captioning", "file"), "is a file; the experiment writes its captioning run folder"),
}


@pytest.mark.parametrize("case", sorted(EXPERIMENT_STALE))
def test_experiment_force_refuses_to_mix_with_an_earlier_run(case, tmp_path, capsys):
    (rel, kind), cause = EXPERIMENT_STALE[case]
    out = _user_folder(tmp_path / "out")
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).mkdir() if kind == "folder" else (out / rel).write_text("mine\n")
    run_bad(capsys, ["experiment", "objectives", "--size", "small", "--data", "synth", "--out", out, "--force"],
            cause, tmp_path)


def test_experiment_rerun_with_force_restarts_its_runs_and_deletes_nothing(tmp_path, monkeypatch, capsys):
    """--force over an earlier experiment (and the user's files): each run's metrics and final
    checkpoint are replaced (every step logged once, one checkpoint), the user's files stay."""
    from vlmkit.experiments import objectives as exp

    tiny = exp.ExperimentSize(vision_width=32, vision_layers=1, patch_size=8, width=32, unimodal_layers=1,
                              multimodal_layers=1, steps=3, batch_size=8, n_train=32, n_eval=8)
    monkeypatch.setitem(exp.SIZES, "tiny", tiny)
    out = _user_folder(tmp_path / "out")
    (out / "coca").mkdir()
    (out / "coca" / "notes.txt").write_text("mine\n")  # a user's file inside one of our run folders
    args = ["experiment", "objectives", "--size", "tiny", "--data", "synth", "--out", str(out), "--force"]
    for attempt in range(2):
        assert main(args) == 0, capsys.readouterr().err
        for name in ("contrastive", "captioning", "coca"):
            rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3], (attempt, name)
            assert sorted(p.name for p in (out / name / "checkpoints").iterdir()) == ["latest", "step_000003"]
    assert (out / "notes" / "todo.txt").read_text() == "mine\n"
    assert (out / "coca" / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "config.json").read_text()) == {"mine": True}  # not a name the experiment writes
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
