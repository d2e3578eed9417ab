"""Training checkpoints: safetensors + JSON only (no pickle), written atomically.

Layout of ``OUT/checkpoints/step_000120/`` (the folder appears only once complete: it is written
to a temp folder and renamed, see `atomic_folder`):

    model.safetensors       full model state (PaliGemma names; LoRA adapters included)
    optimizer.safetensors   every optimizer state tensor as ``state/<param name>/<key>``
                            (AdamW: step, exp_avg, exp_avg_sq)
    rng.safetensors         ``rank<r>/torch_cpu`` (uint8) and ``rank<r>/cuda`` per rank
    trainer_state.json      step, optimizer param groups (hyper-parameters, parameter names),
                            each rank's data-stream position, the run config, loss history

``OUT/checkpoints/latest`` names the newest complete checkpoint. Optimizer state is keyed by
parameter name (the format of torch.distributed.checkpoint.state_dict), so it does not depend
on the parameter order, the strategy (none/DDP/FSDP) or the number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vlmkit.errors import CheckpointError
from vlmkit.weights.safetensors_io import atomic_folder

LATEST = "latest"
STATE_JSON = "trainer_state.json"


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
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None if `root` has none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / STATE_JSON).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} ({e})") from None


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict[str, dict], dict]:
    """(model_state, optimizer_state, {rank: rng_state}, trainer_state) of checkpoint `path`."""
    path = Path(path)
    try:
        train_state = json.loads((path / STATE_JSON).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / STATE_JSON} ({e})") from None
    model_state = _read_tensors(path / "model.safetensors")
    optim_state = unflatten_optimizer_state(_read_tensors(path / "optimizer.safetensors"), train_state.pop("optimizer"))
    rngs: dict[str, dict] = {}
    for key, value in _read_tensors(path / "rng.safetensors").items():
        rank, name = key.split("/", 1)
        rngs.setdefault(rank, {})[name] = value
    return model_state, optim_state, rngs, train_state
