"""Training checkpoints: safetensors + JSON only (no pickle), written atomically.

Layout of ``OUT/checkpoints/step_000120/`` (the folder appears only once complete: it is written
to a temp folder and renamed, see `atomic_folder`):

    model.safetensors       full model state (PaliGemma names; LoRA adapters included)
    optimizer.safetensors   every optimizer state tensor as ``state/<param name>/<key>``
                            (AdamW: step, exp_avg, exp_avg_sq)
    rng.safetensors         ``rank<r>/torch_cpu`` (uint8) and ``rank<r>/cuda`` per rank
    trainer_state.json      step, optimizer param groups (hyper-parameters, parameter names),
                            each rank's data-stream position, the run config, loss history,
                            the model's architecture config and the size of metrics.jsonl
                            (a resume refuses another architecture in one line naming the
                            field, and cuts the metrics log back to that size)

``OUT/checkpoints/latest`` names the newest complete checkpoint. Optimizer state is keyed by
parameter name (the format of torch.distributed.checkpoint.state_dict), so it does not depend
on the parameter order, the strategy (none/DDP/FSDP) or the number of ranks. A failed write
(ENOSPC, EACCES, EROFS...) is a `CheckpointError` naming the cause and the path; the earlier
checkpoints and `latest` stay as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vlmkit.errors import CheckpointError
from vlmkit.weights.safetensors_io import atomic_folder

LATEST = "latest"
STATE_JSON = "trainer_state.json"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", STATE_JSON)
STEP_NAME = re.compile(r"step_\d{6,}")
# Keys of trainer_state.json and their JSON types; `load_checkpoint` requires some of them
# (the Trainer all of TRAINER_KEYS; `world_size`, `metrics_bytes`, `model_config` are absent
# from older checkpoints).
STATE_TYPES = {"step": int, "optimizer": dict, "data": list, "losses": list, "config": dict, "scaler": dict,
               "world_size": int, "metrics_bytes": int, "model_config": dict}
TRAINER_KEYS = ("step", "optimizer", "data", "losses", "config", "scaler")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def flatten_optimizer_state(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Name-keyed optimizer state {"state": {name: {k: v}}, "param_groups": [...]} ->
    (tensors for safetensors, JSON-able rest). Non-tensor per-parameter values go to the JSON."""
    tensors, scalars = {}, {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of `flatten_optimizer_state`."""
    state: dict[str, dict] = {}
    for flat, value in tensors.items():
        _, body = flat.split("/", 1)
        name, key = body.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    for name, values in rest["scalars"].items():
        state.setdefault(name, {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU generator as its uint8 tensor; CUDA if present)."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor], optim_state: dict,
                    rngs: list[dict[str, torch.Tensor]], train_state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest
    `keep` checkpoints. `rngs[r]` is rank r's RNG state. Call on rank 0 only."""
    root = Path(root)
    final = step_dir(root, step)
    opt_tensors, opt_rest = flatten_optimizer_state(optim_state)
    rng_tensors = {f"rank{r}/{k}": v.contiguous().cpu() for r, state in enumerate(rngs) for k, v in state.items()}
    try:
        with atomic_folder(final) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                      str(tmp / "model.safetensors"), metadata={"format": "pt"})
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
            save_file(rng_tensors, str(tmp / "rng.safetensors"), metadata={"format": "pt"})
            state = {"step": step, "optimizer": opt_rest, **train_state}
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))
        tmp_latest = root / f".{LATEST}.tmp"
        tmp_latest.write_text(final.name)
        os.replace(tmp_latest, root / LATEST)
    except (OSError, SafetensorError) as e:
        # atomic_folder has removed its temp folder; `latest` still names the previous checkpoint.
        with contextlib.suppress(OSError):
            (root / f".{LATEST}.tmp").unlink(missing_ok=True)
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        where = getattr(e, "filename", None) or final
        raise CheckpointError(f"cannot write checkpoint {final}: {cause} ({where}); earlier "
                              f"checkpoints and {root / LATEST} are unchanged") from None
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None if `root` has none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {pointer} ({e})") from None
    if not STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} should name a step_NNNNNN folder, got {name[:60]!r}")
    path = Path(root) / name
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{pointer} names {path}, which is missing or incomplete (no {', '.join(missing)})")
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} ({e})") from None


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "bool", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_train_state(path: Path, state, required: tuple[str, ...]) -> dict:
    """`state` (read from `path`) if it has the `required` keys and every key has its type
    (`STATE_TYPES`) and the parts fit together; else CheckpointError naming file and key."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got a {_json_type(state)}")
    for key, tp in STATE_TYPES.items():
        if key not in state:
            if key in required or key in ("step", "optimizer"):
                raise CheckpointError(f"{path} lacks the key {key!r}")
            continue
        if not isinstance(state[key], tp) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: {key!r} must be a JSON {_json_type(tp())}, got "
                                  f"{_json_type(state[key])} {json.dumps(state[key])[:40]}")
    opt, world, data = state["optimizer"], state.get("world_size", 1), state.get("data", [{}])
    if not isinstance(opt.get("param_groups"), list) or not isinstance(opt.get("scalars"), dict):
        raise CheckpointError(f"{path}: 'optimizer' needs a 'param_groups' list and a 'scalars' object")
    if state["step"] < 0 or world < 1 or len(data) != world:
        raise CheckpointError(f"{path}: step {state['step']}, world_size {world} and {len(data)} data "
                              f"state(s) do not fit together")
    if not all(isinstance(d, dict) for d in data):
        raise CheckpointError(f"{path}: every entry of 'data' must be a JSON object")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in state.get("losses", [])):
        raise CheckpointError(f"{path}: 'losses' must be a list of numbers")
    return state


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("step", "optimizer")
                    ) -> tuple[dict, dict, dict[str, dict], dict]:
    """(model_state, optimizer_state, {rank: rng_state}, trainer_state) of checkpoint `path`;
    CheckpointError (one line) if a file is missing or unreadable or the state lacks `required` keys."""
    path = Path(path)
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
    try:
        train_state = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / STATE_JSON} ({e})") from None
    train_state = check_train_state(path / STATE_JSON, train_state, required)
    model_state = _read_tensors(path / "model.safetensors")
    try:
        optim_state = unflatten_optimizer_state(_read_tensors(path / "optimizer.safetensors"),
                                                train_state.pop("optimizer"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not match {STATE_JSON} ({e!r})") from None
    rngs: dict[str, dict] = {}
    for key, value in _read_tensors(path / "rng.safetensors").items():
        rank, _, name = key.partition("/")
        rngs.setdefault(rank, {})[name] = value
    lacking = [f"rank{r}" for r in range(train_state.get("world_size", 1)) if "torch_cpu" not in rngs.get(f"rank{r}", {})]
    if lacking:
        raise CheckpointError(f"{path / 'rng.safetensors'} lacks the RNG state of {', '.join(lacking)}")
    return model_state, optim_state, rngs, train_state


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Run-config fields that decide which parameters exist, are trained and how the adapters scale:
# a resume must keep them (`steps`, intervals, data, lr... may change; so may lora.dropout).
FIXED_RUN_FIELDS = re.compile(r"freeze\..*|lora\.(enabled|rank|alpha|targets)")


def _refuse_difference(path: Path, saved: dict, now: dict) -> None:
    """CheckpointError naming the first field (dotted) whose value differs between two configs."""
    saved, now = _flat(saved), _flat(json.loads(json.dumps(now)))  # tuples -> lists, as saved
    for key in sorted(saved.keys() & now.keys()):  # a field added by a later version is no difference
        if saved[key] != now[key]:
            raise CheckpointError(f"resume: checkpoint {path} was trained with {key}={json.dumps(saved[key])}, "
                                  f"this run has {json.dumps(now[key])}")


def check_resumable(path: Path, state: dict, model_config: dict | None, run_config: dict,
                    shapes: dict[str, tuple[int, ...]], saved_shapes: dict[str, tuple[int, ...]]) -> None:
    """CheckpointError naming the first difference between checkpoint `path` and this run: the
    model's config (`model_config`, a dataclass as dict), the LoRA / freezing settings, then the
    parameter names and shapes (`shapes` this model's, `saved_shapes` the checkpoint's)."""
    if isinstance(state.get("model_config"), dict) and model_config is not None:
        _refuse_difference(path, state["model_config"], model_config)
    fixed = [{k: v for k, v in _flat(c).items() if FIXED_RUN_FIELDS.fullmatch(k)} for c in (state["config"], run_config)]
    _refuse_difference(path, *fixed)
    for name in sorted(saved_shapes.keys() | shapes.keys()):
        old, new = saved_shapes.get(name), shapes.get(name)
        if old != new:
            what = f"has no parameter {name}" if old is None else f"has {name} of shape {list(old)}"
            now = "this model has none" if new is None else f"this model's is {list(new)}"
            raise CheckpointError(f"resume: checkpoint {path} {what}, {now}")
