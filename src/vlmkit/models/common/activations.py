"""Activations by name, as typed config values, and the Hugging Face names they correspond to.

A config stores one of `Activation`; models look the function up in `ACTIVATIONS`. The names
differ from HF's on purpose where HF's are misleading ("gelu_pytorch_tanh" is the tanh
approximation, "gelu" the exact erf form).
"""

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F


Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "silu"]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Both SigLIP and Gemma were trained with the tanh approximation of GELU; the exact erf form
    # changes outputs beyond float tolerance.
    return F.gelu(x, approximate="tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # OpenAI's CLIP was trained with x * sigmoid(1.702 x), a cheaper GELU stand-in; its towers
    # (and LLaVA's, which reuse them) must keep it.
    return x * torch.sigmoid(1.702 * x)

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU: LLaVA's and InternVL's projectors
    "gelu_tanh": gelu_tanh,  # SigLIP, Gemma
    "quick_gelu": quick_gelu,  # OpenAI CLIP
    "silu": F.silu,
}

# HF `hidden_act` / `projector_hidden_act` -> ours. Every alias here is numerically the same op
# in transformers ("gelu_fast" is not: it is a different tanh formula, so it is not accepted).
HF_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu", "silu": "silu",
    "swish": "silu",
}
TO_HF_ACTIVATION: dict[str, str] = {
    "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu",
}


def activation_from_hf(name: str, field: str = "hidden_act") -> Activation:
    """HF activation name -> ours; ValueError naming the field for one we do not implement."""
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported {field} {name!r} (supported: {sorted(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]
