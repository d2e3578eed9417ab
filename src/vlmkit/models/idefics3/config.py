"""Idefics3 / SmolVLM config: a SigLIP tower (bucketed positions), the pixel-shuffle connector and
a decoder config.

transformers' Idefics3 and SmolVLM (model_type "idefics3" / "smolvlm") are one architecture; they
differ in their names and in one behaviour, both fields here:
- `keep_first_frame`: SmolVLM's `get_image_features` keeps the first frame when every frame of
  the batch is all-zero padding (Idefics3 then encodes none);
- `hf_model_type`: the names config.json is written with (no effect on the computation).

Presets follow the published config.json files (HF HuggingFaceTB/*; every one has model_type
"idefics3", `tie_word_embeddings` false and a Llama (SmolLM2) text_config). Each preset builds
with the published parameter count (tests/parity/test_idefics3_parity.py). Sources:
- SmolVLM-256M-Instruct: verified against an exact copy of the hub repo (config.json,
  preprocessor_config.json, processor_config.json; github xi-ix/smolvlm_256m_ft,
  SmolVLM-256M-Instruct/ at commit 0c7b2de, transformers 4.46.0): SigLIP-B/16 at 512 (768 wide,
  12 layers, 12 heads, MLP 3072, LayerNorm eps 1e-6, gelu_pytorch_tanh), scale factor 4 (64
  tokens per 512 px frame), SmolLM2-135M shape (576 wide, 30 layers, 9 heads / 3 KV heads of 64,
  MLP 1536, RMSNorm eps 1e-5, rope_theta 1e5, 8192 positions), vocabulary 49280, `<image>` 49190,
  pad / bos / eos 2 / 1 / 2; processor longest_edge 2048, max_image_size 512, mean / std 0.5.
  Every field matched.
- SmolVLM-500M-Instruct: the same tower and connector, SmolLM2-360M shape (960 wide, 32 layers,
  15 heads, 5 KV heads, MLP 2560). Unverified: no copy of its config.json was found; the values
  are those of SmolVLM2-500M-Video-Instruct's config.json (quoted in a public test) and the model
  card's SmolLM2-360M base.
- SmolVLM-Instruct (2.2B): SigLIP so400m/14 at 384, scale factor 3 (81 tokens per frame),
  SmolLM2-1.7B shape (2048 wide, 24 layers, 32 heads / 32 KV heads of 64, MLP 8192, rope_theta
  273768, eps 1e-5), vocabulary 49155, `<image>` 49153: verified against a public test that
  quotes the released config.json (find_string '"rope_theta": 273768'). Unverified: 16384
  positions (the model card's 16k context) and the processor sizes, which the quote leaves out.
- debug: SigLIP debug tower (4 x 4 patches), scale factor 2 (4 tokens per frame), Llama debug.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.siglip.config import PRESETS as SIGLIP_PRESETS
from vlmkit.models.siglip.config import SiglipVisionConfig

HFModelType = Literal["idefics3", "smolvlm"]


def idefics3_connector(scale_factor: int) -> ConnectorConfig:
    """Idefics3Connector: pixel shuffle by `scale_factor`, then one linear without bias."""
    return ConnectorConfig(pixel_shuffle=scale_factor, num_layers=1, bias=False)


@dataclass(kw_only=True)
class Idefics3Config:
    vision: SiglipVisionConfig  # bucket_positions=True for every published checkpoint
    text: DecoderConfig  # LlamaConfig for every published checkpoint
    connector: ConnectorConfig = field(default_factory=lambda: idefics3_connector(2))
    # Id of the `<image>` token; the processor writes image_seq_len of them per frame.
    image_token_id: int = 128257
    keep_first_frame: bool = False
    hf_model_type: HFModelType = "idefics3"

    def __post_init__(self):
        g, s = self.vision.grid, self.connector.pixel_shuffle
        if g % s:
            raise ValueError(f"pixel shuffle by {s} needs a patch grid divisible by it, got {g} x {g}")

    @property
    def num_image_tokens(self) -> int:
        """Tokens per frame (transformers' image_seq_len): (image_size / patch_size)^2 / scale^2."""
        return self.connector.num_tokens(self.vision.num_patches)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Idefics3Config":
        if name not in PRESETS:
            raise KeyError(f"unknown Idefics3 preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _smollm2(**kw) -> LlamaConfig:
    return LlamaConfig(rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192, head_dim=64,
                       tie_embeddings=False, pad_token_id=2, bos_token_id=1, eos_token_id=2, **kw)


_SIGLIP_B16_512 = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                                     image_size=512, patch_size=16, bucket_positions=True)
_SO400M_384 = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16,
                                 image_size=384, patch_size=14, bucket_positions=True)

PRESETS: dict[str, Idefics3Config] = {
    "SmolVLM-256M-Instruct": Idefics3Config(
        vision=_SIGLIP_B16_512, connector=idefics3_connector(4), image_token_id=49190,
        text=_smollm2(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3),
    ),
    "SmolVLM-500M-Instruct": Idefics3Config(
        vision=_SIGLIP_B16_512, connector=idefics3_connector(4), image_token_id=49190,
        text=_smollm2(vocab_size=49280, hidden_size=960, intermediate_size=2560, num_layers=32, num_heads=15,
                      num_kv_heads=5),
    ),
    "SmolVLM-Instruct": Idefics3Config(
        vision=_SO400M_384, connector=idefics3_connector(3), image_token_id=49153,
        text=replace(_smollm2(vocab_size=49155, hidden_size=2048, intermediate_size=8192, num_layers=24,
                              num_heads=32, num_kv_heads=32),
                     rope_theta=273768.0, max_position_embeddings=16384),
    ),
    "debug": Idefics3Config(
        vision=replace(SIGLIP_PRESETS["debug"], bucket_positions=True), text=LLAMA_PRESETS["debug"],
        image_token_id=511,
    ),
}
