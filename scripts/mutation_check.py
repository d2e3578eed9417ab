"""Mutation check: plant known bugs in a scratch copy of the repository and require the tests to fail.

    python scripts/mutation_check.py                    # every mutation, its own fast test subset
    python scripts/mutation_check.py --only topp-gather,temperature-ignored
    python scripts/mutation_check.py --full             # the whole default suite per mutation (slow)
    python scripts/mutation_check.py --list             # names, files and the tests that should fail

Each mutation is a list of exact text edits (file, old snippet, new snippet). An old snippet must
occur exactly once in its file, so a mutation can never go stale silently: when the code it targets
is rewritten, the script stops and names the edit. The working tree (tracked files plus untracked
ones git does not ignore, i.e. uncommitted work included) is copied once into a temporary folder;
each mutation is written there, its tests run with `PYTHONPATH=<scratch>/src`, and the file is
restored. First the union of all chosen tests runs unmutated and must pass (otherwise a failure
proves nothing). A mutation is *caught* when pytest reports failures or errors (exit 1 or 2).

Runs are single-threaded (OMP/MKL threads 1, `torch` picks that up), bytecode is not written (a
restored file must never be shadowed by a mutated file's .pyc), and `-x` stops at the first
failure, so a caught mutation usually costs a few seconds. Prints one row per mutation: name,
tests run, caught yes/no, time; exits 1 if any mutation survives or a run went wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN, COMMON = "src/vlmkit/generation", "src/vlmkit/models/common"
DECODER = f"{COMMON}/decoder.py"  # the one decoder of Gemma / Llama / Mistral / Qwen2
T_GEN, T_SAMPLING = "tests/unit/test_generation.py", "tests/unit/test_sampling_reference.py"
T_GEN_PARITY, T_MODEL_PARITY = "tests/parity/test_generation_parity.py", "tests/parity/test_model_parity.py"
T_ATTENTION = "tests/unit/test_attention.py"


@dataclass(frozen=True)
class Mutation:
    """A named bug: `edits` are (file, old, new) replacements; `tests` the pytest targets that
    should catch it (files or node ids; targets whose file does not exist are reported and left out)."""

    name: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]
    why: str


MUTATIONS = (
    Mutation(name="topp-gather", why="top-p mask un-sorted with gather instead of scatter",
             edits=((f"{GEN}/sampling.py", "drop = drop_sorted.scatter(-1, order, drop_sorted)",
                     "drop = drop_sorted.gather(-1, order)"),),
             tests=(T_SAMPLING, f"{T_GEN}::test_top_k_and_top_p_restrict_support")),
    Mutation(name="temperature-ignored", why="logits not divided by the temperature",
             edits=((f"{GEN}/sampling.py", "logits = logits.float() / cfg.temperature",
                     "logits = logits.float()"),),
             tests=(T_SAMPLING, f"{T_GEN}::test_sampling_is_seeded_and_varies")),
    Mutation(name="topk-off-by-one", why="top-k keeps k + 1 tokens",
             edits=((f"{GEN}/sampling.py", "torch.topk(logits, min(k, logits.shape[-1])",
                     "torch.topk(logits, min(k + 1, logits.shape[-1])"),),
             tests=(T_SAMPLING, f"{T_GEN}::test_top_k_and_top_p_restrict_support")),
    Mutation(name="rope-decode-offset", why="decode steps use RoPE position + 1",
             edits=((f"{GEN}/decode.py", "positions = state.next_pos[..., None]",
                     "positions = state.next_pos[..., None] + 1"),),
             tests=(f"{T_GEN}::test_cached_decode_equals_full_forward", T_GEN_PARITY)),
    Mutation(name="kv-cache-slot", why="the new token's K/V written one cache slot later",
             edits=((f"{GEN}/decode.py", "slot = torch.tensor([state.next_slot], device",
                     "slot = torch.tensor([state.next_slot + 1], device"),),
             tests=(f"{T_GEN}::test_cached_decode_equals_full_forward", T_GEN_PARITY)),
    Mutation(name="sliding-window-wide", why="Gemma 2 local layers see window + 1 keys",
             edits=((f"{COMMON}/attention.py", "key_index[None, :] > query_index[:, None] - sliding_window",
                     "key_index[None, :] >= query_index[:, None] - sliding_window"),),
             tests=(T_MODEL_PARITY, T_GEN_PARITY, T_GEN)),
    Mutation(name="kv-group-repeat", why="grouped KV heads tiled (h % K) instead of blocked (h // n_rep): "
             "the eager path (soft-capped attention, Gemma 2)",
             edits=((f"{COMMON}/attention.py", "x.repeat_interleave(n_rep, dim=1)", "x.repeat(1, n_rep, 1, 1)"),),
             tests=(T_ATTENTION, T_MODEL_PARITY, T_GEN_PARITY)),
    Mutation(name="kv-group-sdpa", why="grouped KV heads tiled (h % K) on the SDPA path (no soft-cap)",
             edits=((f"{COMMON}/attention.py",
                     "return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)",
                     "return F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1), "
                     "attn_mask=mask, scale=scale)"),),
             tests=(T_ATTENTION, T_MODEL_PARITY, T_GEN_PARITY)),
    Mutation(name="prefix-mask-short", why="the bidirectional image+prefix block one token shorter",
             edits=((f"{COMMON}/attention.py", "    q_prefix = in_prefix[:, query_index]  # [B, T]\n",
                     "    in_prefix = in_prefix & F.pad(in_prefix[:, 1:], (0, 1))\n"
                     "    q_prefix = in_prefix[:, query_index]  # [B, T]\n"),),
             tests=(T_MODEL_PARITY, "tests/unit/test_training_loss.py", T_GEN)),
    Mutation(name="rmsnorm-no-offset", why="RMSNorm scales by w instead of (1 + w)",
             edits=((f"{COMMON}/norms.py", "scale = 1.0 + w if self.unit_offset else w", "scale = w"),),
             tests=(T_MODEL_PARITY,)),
    Mutation(name="embed-scale-dropped", why="Gemma's sqrt(D) embedding scale dropped",
             edits=((DECODER, "if self.cfg.embed_scale:", "if False:"),),
             tests=(T_MODEL_PARITY,)),
    Mutation(name="final-softcap-dropped", why="Gemma 2's final logit soft-cap dropped",
             edits=((DECODER, "return logits if cap is None else torch.tanh(logits / cap) * cap",
                     "return logits"),),
             tests=(T_MODEL_PARITY, T_GEN_PARITY)),
    Mutation(name="loc-decode-off-by-one", why="<locK> decoded as the start of bin K + 1",
             edits=(("src/vlmkit/tasks/parsing.py", "return value / NUM_LOC_BINS * size",
                     "return (value + 1) / NUM_LOC_BINS * size"),),
             tests=("tests/unit/test_task_parsing.py",)),
    Mutation(name="vqa-leave-one-out", why="VQA accuracy without the leave-one-out (matches / 3 for all)",
             edits=(("src/vlmkit/eval/text_metrics.py", "left_out_match = matches * min((matches - 1) / 3.0, 1.0)",
                     "left_out_match = matches * min(matches / 3.0, 1.0)"),),
             tests=("tests/unit/test_text_metrics.py",)),
    Mutation(name="resume-step", why="a resumed run restarts one step early",
             edits=(("src/vlmkit/training/trainer.py", "self.step, self.losses = step, list(state[\"losses\"])",
                     "self.step, self.losses = step - 1, list(state[\"losses\"])"),),
             tests=("tests/integration/test_train_resume.py::test_kill_and_resume_is_identical",)),
)  # fmt: skip


class StaleMutation(Exception):
    """An old snippet no longer occurs exactly once: the mutation must be rewritten."""


def working_tree_files(root: Path) -> list[str]:
    """Tracked files plus untracked, not-ignored ones (what `git status` would commit)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout.decode()
    return sorted({p for p in out.split("\0") if p and (root / p).is_file()})


def make_scratch(root: Path, dest: Path) -> None:
    for rel in working_tree_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)


def check_edits(tree: Path, mutations) -> None:
    """Raise StaleMutation naming every edit whose old snippet is not in its file exactly once."""
    stale = []
    for m in mutations:
        for path, old, _ in m.edits:
            f = tree / path
            n = f.read_text().count(old) if f.is_file() else -1
            if n != 1:
                where = "file missing" if n < 0 else f"found {n} times"
                stale.append(f"{m.name}: {path}: {old!r} ({where})")
    if stale:
        raise StaleMutation("stale mutations (rewrite them against the current code):\n  " + "\n  ".join(stale))


def present_targets(tree: Path, targets) -> tuple[list[str], list[str]]:
    """Split pytest targets into (those whose file exists in `tree`, those that do not)."""
    have, missing = [], []
    for t in targets:
        (have if (tree / t.split("::")[0]).is_file() else missing).append(t)
    return have, missing


def run_pytest(tree: Path, targets: list[str], timeout: float) -> tuple[int, str, str | None]:
    """pytest in `tree` on `targets` (all default tests if empty), single-threaded.

    Returns (exit code, pytest's last line, the first failing test's node id or None)."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *targets]
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", None
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    failed = next((ln.split()[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))), None)
    return p.returncode, lines[-1] if lines else p.stderr.strip()[-200:], failed


def apply(tree: Path, m: Mutation) -> dict[Path, str]:
    """Write the mutation into `tree`; return the original text of every file it changed."""
    originals: dict[Path, str] = {}
    for path, old, new in m.edits:
        f = tree / path
        text = f.read_text()
        originals.setdefault(f, text)
        f.write_text(text.replace(old, new, 1))
    return originals


def check_one(tree: Path, m: Mutation, full: bool, timeout: float) -> dict:
    have, missing = present_targets(tree, m.tests)
    targets = [] if full else have
    row = {"name": m.name, "tests": "full suite" if full else " ".join(have) or "-", "missing": missing}
    if not full and not have:
        return row | {"caught": False, "seconds": 0.0, "detail": "no test target exists"}
    originals = apply(tree, m)
    t0 = time.perf_counter()
    try:
        rc, last, failed = run_pytest(tree, targets, timeout)
    finally:
        for f, text in originals.items():
            f.write_text(text)
    # 1: tests failed, 2: errors (collection / import). 0: survived; anything else is a broken run.
    return row | {"caught": rc in (1, 2), "rc": rc, "seconds": time.perf_counter() - t0, "detail": last,
                  "caught_by": failed}


def print_table(rows: list[dict]) -> None:
    print(f"\n{'mutation':24s} {'caught':6s} {'time':>7s}  tests run  [first failure]")
    for r in rows:
        by = f"  [{r['caught_by']}]" if r.get("caught_by") else ""
        print(f"{r['name']:24s} {'yes' if r['caught'] else 'NO':6s} {r['seconds']:6.1f}s  {r['tests']}{by}")
        if r.get("missing"):
            print(f"{'':40s}(not in this tree: {' '.join(r['missing'])})")
        if not r["caught"]:
            print(f"{'':40s}-> rc {r.get('rc', '-')}: {r['detail']}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated mutation names (default: all)")
    p.add_argument("--full", action="store_true", help="run the whole default suite for each mutation")
    p.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    p.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    return p.parse_args(argv)


def select(only: str | None) -> list[Mutation]:
    if not only:
        return list(MUTATIONS)
    names = {m.name: m for m in MUTATIONS}
    unknown = [n for n in only.split(",") if n not in names]
    if unknown:
        sys.exit(f"mutation_check: error: unknown mutation(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return [names[n] for n in only.split(",")]


def baseline(tree: Path, mutations, full: bool, timeout: float) -> bool:
    targets = [] if full else sorted({t for m in mutations for t in present_targets(tree, m.tests)[0]})
    t0 = time.perf_counter()
    rc, last, _ = run_pytest(tree, targets, timeout * 2)
    print(f"baseline (unmutated, {'full suite' if full else f'{len(targets)} targets'}): rc {rc}, "
          f"{time.perf_counter() - t0:.1f}s: {last}", flush=True)
    return rc == 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    mutations = select(a.only)
    if a.list:
        for m in mutations:
            print(f"{m.name:24s} {m.why}\n{'':24s} {', '.join(p for p, _, _ in m.edits)} -> {' '.join(m.tests)}")
        return 0
    tree = Path(tempfile.mkdtemp(prefix="vlmkit-mutation-"))
    try:
        make_scratch(ROOT, tree)
        check_edits(tree, mutations)
        if not baseline(tree, mutations, a.full, a.timeout):
            print("the unmutated tests fail: fix that first, a failing suite catches nothing")
            return 1
        rows = []
        for m in mutations:
            rows.append(check_one(tree, m, a.full, a.timeout))
            print(f"  {m.name}: {'caught' if rows[-1]['caught'] else 'SURVIVED'} "
                  f"({rows[-1]['seconds']:.1f}s) {rows[-1]['detail']}", flush=True)
        print_table(rows)
        survived = [r["name"] for r in rows if not r["caught"]]
        tail = f"; survived: {', '.join(survived)}" if survived else ""
        print(f"\n{len(rows) - len(survived)} of {len(rows)} caught{tail}")
        return 1 if survived else 0
    except StaleMutation as e:
        print(e)
        return 1
    finally:
        if a.keep:
            print(f"scratch copy kept at {tree}")
        else:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
