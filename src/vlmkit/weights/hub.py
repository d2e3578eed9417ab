"""Hugging Face Hub names as models: `org/name[@revision]` -> a snapshot folder in the HF cache.

Everything goes through `huggingface_hub`, so it behaves as the rest of the HF tooling does: the
cache is HF_HUB_CACHE (default HF_HOME/hub), HF_HUB_OFFLINE=1 reads the cache only, and the token
comes from HF_TOKEN or `hf auth login`. Only the files vlmkit reads are fetched (`ALLOW_PATTERNS`):
JSON files (config, tokenizer, processor / preprocessor, chat template, the shard index), the
SentencePiece model, the Jinja chat template and `model*.safetensors` weights. Pickle weights
(`.bin`, `.pt`, `.pth`, `.ckpt`) are never downloaded: loading them can run code. Other safetensors
names (Mistral's `consolidated.safetensors`, adapters) are left out too, as vlmkit reads only
`model.safetensors` or the shards its index names.

huggingface_hub is imported on first use, so loading a local folder never pays for it.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlmkit.errors import CheckpointError

ALLOW_PATTERNS = ("*.json", "tokenizer.model", "chat_template.jinja", "model*.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# huggingface_hub's repo id rule (validate_repo_id), with the namespace required: "org/name".
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_OFFLINE_FIX = ("download it once without HF_HUB_OFFLINE (or with `hf download {repo}`), or unset "
                "HF_HUB_OFFLINE")


def parse_hub_name(source: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) when `source` reads as `org/name[@revision]`, else None."""
    name, at, revision = str(source).partition("@")
    if not _REPO_ID.fullmatch(name) or "--" in name or ".." in name or name.endswith((".", "-")):
        return None
    if at and not revision.strip():
        return None
    return name, revision or None


def snapshot(repo: str, revision: str | None = None) -> Path:
    """The snapshot folder of Hub model `repo` at `revision` (default: main), downloading the files
    vlmkit reads when not cached. Raises CheckpointError (one line) for a missing, gated or
    unreachable repo, a revision that does not exist, or a repo without safetensors weights."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise CheckpointError(f"model {repo} is a Hugging Face Hub name, which needs huggingface_hub "
                              "(pip install huggingface_hub)") from None
    label = f"{repo}@{revision}" if revision else repo
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(ALLOW_PATTERNS)))
    except Exception as e:  # noqa: BLE001 - huggingface_hub's errors become one line; others propagate
        message = _describe(e, repo, label, constants)
        if message is None:
            raise
        raise CheckpointError(message) from None
    _require_safetensors(folder, repo, revision, label, offline=constants.HF_HUB_OFFLINE)
    return folder


def _describe(e: Exception, repo: str, label: str, constants) -> str | None:
    """One line for a failed snapshot_download, or None when `e` is not a Hub failure."""
    from huggingface_hub import errors

    cache = constants.HF_HUB_CACHE
    if isinstance(e, errors.GatedRepoError):
        return (f"Hub model {repo} is gated: accept its terms on huggingface.co/{repo}, then log in "
                "(`hf auth login` or HF_TOKEN)")
    if isinstance(e, errors.RepositoryNotFoundError):
        return (f"Hub model {repo} does not exist, or it is private and no token with access was found "
                "(`hf auth login` or HF_TOKEN); a local folder of that name does not exist either")
    if isinstance(e, errors.RevisionNotFoundError):
        return f"Hub model {repo} has no revision {label.partition('@')[2] or 'main'}"
    if isinstance(e, errors.LocalEntryNotFoundError) or isinstance(e, errors.OfflineModeIsEnabled):
        if constants.HF_HUB_OFFLINE:
            return (f"Hub model {label} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 "
                    f"forbids downloading it: {_OFFLINE_FIX.format(repo=repo)}")
        return (f"cannot reach the Hugging Face Hub for {label}, and it is not in the cache ({cache}); "
                "check the connection (or HF_ENDPOINT), or pre-download it")
    if isinstance(e, errors.HfHubHTTPError):
        return f"the Hugging Face Hub refused {label}: {' '.join(str(e).split())[:300]}"
    if isinstance(e, (errors.HFValidationError, ConnectionError, TimeoutError)):
        return f"cannot fetch Hub model {label}: {e}"
    return None


def _require_safetensors(folder: Path, repo: str, revision: str | None, label: str, offline: bool) -> None:
    """CheckpointError unless the snapshot holds `model.safetensors` or a shard index."""
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    names = {p.name for p in folder.iterdir()}
    if not offline:  # what the repo holds beyond the files we fetched
        try:
            from huggingface_hub import list_repo_files

            names |= set(list_repo_files(repo, revision=revision))
        except Exception:  # noqa: BLE001 - only for a better message; the error below stands anyway
            pass
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CheckpointError(f"Hub model {label} has only pickle weights ({', '.join(pickles[:3])}); vlmkit "
                              "loads safetensors only (loading pickle can run code): pick a revision or repo "
                              "with model.safetensors, or convert the weights")
    raise CheckpointError(f"Hub model {label} has no model.safetensors or model.safetensors.index.json "
                          f"(snapshot {folder})")
