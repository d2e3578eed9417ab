"""How far a weight-only quantised model is from its float model, on held-out data.

For each scheme (`vlmkit.generation.quant`; "int8-dyn" with its activations quantised at every
row count, as in decode, not only up to its prefill limit): the float pipeline and a quantised copy score the
same held-out rows (prefix-LM teacher forcing, as in training): max |logit error| / max |float
logit| and argmax agreement over the first `positions` target positions (the suffix tokens the
model is trained to predict), and the mean next-token loss on all held-out targets, float vs
quantised. The held-out rows are the bundled model's test world (`SynthConfig(seed=1000)`, the
scenes tests/regression/test_bundled_quality.py evaluates on). Run by benchmarks/bench_quant.py.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from vlmkit.generation.quant import quantize_model, quantized_part
from vlmkit.generation.quantize_dynamic import always_dynamic
from vlmkit.models.registry import family_of

BUNDLED = "vlmkit-shapes-tiny"


def logit_error(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """out, ref [..., V] float32 -> max |out - ref| / max |ref| and argmax agreement."""
    return {"max_abs_over_max_ref": float((out - ref).abs().max() / ref.abs().max()),
            "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean())}


def held_out_batches(pipe, n_scenes: int = 48, batch_size: int = 32, seed: int = 1000) -> list[dict]:
    """Training-style batches (labels -100 outside the suffix) of the synthetic test world."""
    from vlmkit.data.synth import SynthConfig, iter_scenes
    from vlmkit.training.collate import collate

    rows = [{"image": scene.image, "prefix": ex.prefix, "suffix": ex.suffix}
            for _, scene, examples in iter_scenes(n_scenes, SynthConfig(seed=seed)) for ex in examples]
    return [collate(rows[i:i + batch_size], pipe.processor) for i in range(0, len(rows), batch_size)]


@torch.inference_mode()
def target_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [K, V] float32 at the K target positions, their targets [K]) of a batch."""
    adapter = family_of(model).generation
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    x = adapter.prepare(model, inputs)
    lm = quantized_part(model)
    h = lm(x.embeds, x.positions, x.attention_mask.bool(), x.in_prefix)  # [B, T, D]
    keep = labels[:, 1:] != -100  # [B, T-1]: position t predicts token t+1
    return lm.logits(h[:, :-1][keep]).float(), labels[:, 1:][keep]


def _score(model, batches: list[dict]) -> tuple[torch.Tensor, float]:
    """(all target logits [K, V], mean next-token loss)."""
    logits, targets = zip(*(target_logits(model, b) for b in batches))
    logits, targets = torch.cat(logits), torch.cat(targets)
    return logits, float(F.cross_entropy(logits, targets))


def report(source: str = BUNDLED, schemes=("int8", "int4-g32", "int4-g64", "int4-g128"), positions: int = 512,
           dtype: str = "float32", n_scenes: int = 16) -> dict:
    """Per scheme: logit error and argmax agreement over `positions` targets, held-out loss change.

    Returns {"source", "dtype", "positions", "targets", "loss_float", "rows": [per-scheme dicts]}.
    """
    from vlmkit.pipeline import Pipeline

    pipe = Pipeline.load(source, dtype=dtype)
    batches = [{k: v.to(pipe.dtype) if v.is_floating_point() else v for k, v in b.items()}
               for b in held_out_batches(pipe, n_scenes)]
    ref, loss_float = _score(pipe.model, batches)
    if ref.shape[0] < positions:
        raise ValueError(f"only {ref.shape[0]} held-out targets, fewer than {positions}")
    rows = []
    for name in schemes:
        model = always_dynamic(quantize_model(copy.deepcopy(pipe.model), name))  # int8-dyn: decode numerics
        out, loss = _score(model, batches)
        part = quantized_part(model)
        kinds = [type(m).__name__ for m in part.modules()]
        rows.append({"scheme": name, **logit_error(out[:positions], ref[:positions]),
                     "argmax_agreement_all": logit_error(out, ref)["argmax_agreement"],
                     "loss_float": loss_float, "loss_quantized": loss, "loss_change": loss - loss_float,
                     "int4_modules": sum(k.startswith("Int4") for k in kinds),
                     "int8_modules": sum(k.startswith(("Int8", "DynamicInt8")) for k in kinds)})
    return {"source": source, "dtype": dtype, "positions": positions, "targets": int(ref.shape[0]),
            "loss_float": loss_float, "rows": rows}
