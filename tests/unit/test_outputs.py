"""vlmkit.outputs: atomic folders that never delete what they did not write."""

import os

import pytest

from vlmkit import outputs
from vlmkit.errors import OutputError
from vlmkit.outputs import atomic_folder, atomic_write_bytes, check_output_dir


def _hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_absent_target_appears_whole(tmp_path):
    final = tmp_path / "out"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not final.exists()  # nothing visible until the block succeeds
    assert (final / "a.txt").read_text() == "a" and _hidden(tmp_path) == []


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_old_contents(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError
    assert (final / "a.txt").read_text() == "old" and _hidden(tmp_path) == []


def test_overwrite_replaces_same_names_and_keeps_the_rest(tmp_path):
    final = tmp_path / "out"
    (final / "sub").mkdir(parents=True)
    (final / "a.txt").write_text("old")
    (final / "mine.txt").write_text("mine")
    (final / "sub" / "mine.txt").write_text("mine too")
    with atomic_folder(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert (final / "a.txt").read_text() == "new" and (final / "sub" / "b.txt").read_text() == "b"
    assert (final / "mine.txt").read_text() == "mine" and (final / "sub" / "mine.txt").read_text() == "mine too"
    assert _hidden(tmp_path) == []


def test_non_empty_refused_without_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        with atomic_folder(final, overwrite=False):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_folder_filled_while_writing_is_not_replaced(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(OutputError, match="not empty"):
        with atomic_folder(final, overwrite=False) as tmp:
            (tmp / "a.txt").write_text("a")
            final.mkdir()
            (final / "theirs.txt").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs.txt"] and _hidden(tmp_path) == []


def test_file_folder_conflict_moves_nothing(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a.txt").write_text("old")
    (final / "sub").write_text("a file where we want a folder")
    with pytest.raises(OutputError, match="a file of that name exists"):
        with atomic_folder(final, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x").write_text("x")
    assert (final / "a.txt").read_text() == "old"  # checked before anything moved


def test_stale_file_refused(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "index.json").write_text("{}")
    with pytest.raises(OutputError, match="earlier write"):
        with atomic_folder(final, overwrite=True, stale=("index.json",)) as tmp:
            (tmp / "single.bin").write_bytes(b"x")
    assert sorted(p.name for p in final.iterdir()) == ["index.json"]


@pytest.mark.parametrize("target", [".", ".."])
def test_cwd_and_parent_refused_even_with_overwrite(target, tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    with pytest.raises(OutputError, match="current folder"):
        check_output_dir(target, overwrite=True)


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    with pytest.raises(OutputError, match="exists"):
        atomic_write_bytes(path, b"two", overwrite=False)
    atomic_write_bytes(path, b"three")
    assert path.read_bytes() == b"three" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_symlinked_target_folder_is_written_through(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with atomic_folder(tmp_path / "link", overwrite=False) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "link").is_symlink() and (real / "a.txt").read_text() == "a"


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # reaped: the PID names no process now
    return pid


def test_leftovers_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    """A write killed before its rename leaves `.NAME.tmp-PID-HOST-*`; the next write of NAME
    removes it when PID is dead on this host, and touches nothing else."""
    dead, host = _dead_pid(), outputs._HOST
    final = tmp_path / "out"
    left = [tmp_path / f".out.tmp-{dead}-{host}-k3j2x9_a", tmp_path / f".out.tmp-{dead}-{host}-zz9"]
    left[0].mkdir()
    (left[0] / "model.safetensors").write_bytes(b"half")
    left[1].write_bytes(b"half a file")  # atomic_write_bytes' temp is a file
    kept = [tmp_path / f".out.tmp-{os.getpid()}-{host}-live1",  # a live writer (this process)
            tmp_path / f".other.tmp-{dead}-{host}-abc",  # another target's
            tmp_path / f".out.tmp-{dead}-00000000-abc",  # made on another host
            tmp_path / ".out.tmp-k3j2x9_a",  # no PID in the name: cannot tell whose
            tmp_path / f".out.tmp-{dead}-{host}-has space"]  # not our shape
    for p in kept:
        p.mkdir()
    link = tmp_path / f".out.tmp-{dead}-{host}-link"
    link.symlink_to(tmp_path / "other.tmp-elsewhere")
    with atomic_folder(final) as tmp:
        assert not any(p.exists() for p in left)  # removed before this write starts
        (tmp / "a.txt").write_text("a")
    assert all(p.is_dir() for p in kept) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["out"]


def test_atomic_write_bytes_removes_its_dead_leftovers(tmp_path):
    dead = _dead_pid()
    left = tmp_path / f".r.json.tmp-{dead}-{outputs._HOST}-abc123"
    left.write_text("{")
    atomic_write_bytes(tmp_path / "r.json", b"{}")
    assert not left.exists() and (tmp_path / "r.json").read_text() == "{}"


def test_temp_names_carry_pid_and_host(tmp_path):
    with atomic_folder(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.tmp-{os.getpid()}-{outputs._HOST}-")
    assert outputs.remove_dead_temps(tmp_path / "missing" / "x") == []  # no parent folder: nothing to do
