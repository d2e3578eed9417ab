"""scripts/mutation_check.py stays runnable: every mutation still applies to the current source (an
old snippet that no longer occurs exactly once means the mutation went stale), each has a test
target in the tree, and a mutation applied to a scratch copy is restored byte for byte.

Running the mutations themselves (pytest per mutation) is the script's job, not the suite's.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
mc = importlib.util.module_from_spec(spec)
sys.modules.setdefault("mutation_check", mc)  # dataclasses look their module up there
spec.loader.exec_module(mc)


def test_every_mutation_applies_to_the_current_source():
    mc.check_edits(ROOT, mc.MUTATIONS)  # raises StaleMutation naming each stale edit
    assert len({m.name for m in mc.MUTATIONS}) == len(mc.MUTATIONS)


def test_every_mutation_has_a_test_target_here():
    for m in mc.MUTATIONS:
        have, _ = mc.present_targets(ROOT, m.tests)
        assert have, f"{m.name}: none of {m.tests} exists"


def test_stale_snippet_is_reported_by_name(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    twice = mc.Mutation(name="twice", edits=(("a.py", "x = 1", "x = 2"),), tests=(), why="")
    gone = mc.Mutation(name="gone", edits=(("b.py", "y", "z"),), tests=(), why="")
    with pytest.raises(mc.StaleMutation, match=r"twice: a.py: 'x = 1' \(found 2 times\)") as e:
        mc.check_edits(tmp_path, [twice, gone])
    assert "gone: b.py" in str(e.value) and "file missing" in str(e.value)


def test_apply_changes_only_the_snippet_and_can_be_restored(tmp_path):
    m = next(m for m in mc.MUTATIONS if m.name == "rmsnorm-no-offset")
    path = m.edits[0][0]
    (tmp_path / path).parent.mkdir(parents=True)
    original = (ROOT / path).read_text()
    (tmp_path / path).write_text(original)
    originals = mc.apply(tmp_path, m)
    mutated = (tmp_path / path).read_text()
    assert mutated == original.replace(m.edits[0][1], m.edits[0][2]) and mutated != original
    assert originals == {tmp_path / path: original}
