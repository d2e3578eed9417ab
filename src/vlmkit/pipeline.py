"""The user-facing text pipeline: folder -> model + tokenizer + processor -> answers.

The folder's config.json names its family (`vlmkit.models.registry`); the family's record gives
the processor builder and the generation adapter, so any `vlm` family runs here. A prompt is what
the family's processor takes as text (LLaVA: with its `<image>` placeholders; PaliGemma: the prefix
alone); `chat` renders a conversation with the checkpoint's own chat template first.

Image features are cached by a hash of the preprocessed pixels, so asking several questions
about one image runs the vision tower once. That needs a processor whose `pixel_values[i]` is the
i-th image alone (its `per_image_pixels` is True: PaliGemma, LLaVA); for the others (tiles,
masks, image sizes beside the pixels) the batch goes to the model as it is.
"""

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from vlmkit.data.chat_template import ChatTemplate, load_chat_template
from vlmkit.data.processor import PaliGemmaProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.generation import GenerationResult, SamplingConfig, StreamEvent, generate
from vlmkit.generation.batching import LANES  # the cache layout a serving row reproduces
from vlmkit.generation.compile import decode_fn_for
from vlmkit.generation.quant import QuantScheme, load_hf_quantized, load_quantized, save_quantized, scheme_of
from vlmkit.validate import image_stats
from vlmkit.weights.hf import load_hf, read_config
from vlmkit.weights.registry import resolve_model

PREPROCESSOR_NAME = "preprocessor_config.json"


def _image_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from `preprocessor_config.json` if the folder has one, else SigLIP's 0.5/0.5."""
    path = folder / PREPROCESSOR_NAME
    if not path.is_file():
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return image_stats(path)  # checked: finite, one value or one per channel, std > 0


def paligemma_processor(folder: Path, tokenizer: Tokenizer, cfg) -> PaliGemmaProcessor:
    """The PaliGemma family's processor builder (named by its registry record)."""
    if tokenizer.image_token_id != cfg.image_token_id:
        raise CheckpointError(
            f"{folder}: tokenizer's <image> id {tokenizer.image_token_id} != config image_token_index "
            f"{cfg.image_token_id}"
        )
    mean, std = _image_stats(folder)
    return PaliGemmaProcessor(tokenizer, cfg.vision.image_size, cfg.num_image_tokens, mean, std,
                              max_length=cfg.text.max_position_embeddings)


class Pipeline:
    """A loaded model of a `vlm` family with its tokenizer and processor."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, processor,
                 folder: Path | None = None, feature_cache_size: int = 16, family: str | None = None,
                 decode_fn: Callable | None = None):
        self.model, self.tokenizer, self.processor, self.folder = model, tokenizer, processor, folder
        self.family = family
        self.decode_fn = decode_fn  # the decode step `run` uses (a compiled one with compile=True)
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.feature_cache_size = feature_cache_size
        self._template: ChatTemplate | None = None

    @classmethod
    def load(cls, source: str | Path | None = None, dtype=None, device="cpu", compile: bool = False,
             quantize: str | None = None, group_size: int | None = None, prepack: bool = False) -> "Pipeline":
        """Load a bundled model by name (None = the default), a HF checkpoint folder or a quantised
        folder (`save_quantized`).

        Args:
            compile: decode with a `torch.compile`d step (`vlmkit.generation.compile`): True for
                the default mode or a mode name ("max-autotune": frozen weights, autotuned C++ GEMM
                kernels on CPU); falls back to eager with one warning line where unavailable.
            quantize: quantisation of the decoder: "int8", "int8-dyn" (int8 activations too),
                "int4" or "int4-g32/64/128" (`vlmkit.generation.quant`); `group_size` overrides int4's.
            prepack: store the decoder's bf16 projections in oneDNN's blocked layout where that
                is bit-exact, and run its int8-dyn layers through vlmkit's int8 kernel (oneDNN's int8
                layout where the kernel does not build) (`vlmkit.generation.prepack`; CPU only, one
                warning line where nothing packs). int8-dyn packed runs W8A8 at every row count.
                With compile only in mode "max-autotune".
        """
        if prepack and compile and compile != "max-autotune":
            raise ConfigError("prepack combines with compile only in mode max-autotune (inductor lowers the "
                              "packed kernels only with frozen weights); use --compile-mode max-autotune or drop one")
        folder = resolve_model(source)
        config, fam = read_config(folder)
        if fam.generation is None or fam.processor is None:
            raise CheckpointError(f"{folder} holds a {fam.name} model ({fam.kind}), which the text pipeline "
                                  "does not run; load it with vlmkit.weights.hf.load_hf")
        scheme = _scheme(quantize, group_size)
        saved = scheme_of(config, str(folder / "config.json"))
        if saved is not None and scheme not in (None, saved):
            raise ConfigError(f"{folder} is already quantised ({saved.name}); load it without quantize / --quantize")
        tokenizer = Tokenizer.from_folder(folder)
        if saved is not None:
            model = load_quantized(folder, dtype=dtype, device=device)
        else:
            # Quantised while loading: the float decoder is never in memory whole.
            model = (load_hf(folder, dtype=dtype, device=device) if scheme is None
                     else load_hf_quantized(folder, scheme, dtype=dtype, device=device))
        if prepack:
            _prepack(model)
        decode_fn = decode_fn_for(compile, device)  # compile: False, True or a torch.compile mode
        return cls(model, tokenizer, fam.build_processor(folder, tokenizer, model.cfg), folder, family=fam.name,
                   decode_fn=decode_fn)

    def save_quantized(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write this pipeline's quantised model as a folder `load` reads back exactly (safetensors)."""
        return save_quantized(self.model, folder, source=self.folder, overwrite=overwrite)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def chat_template(self) -> ChatTemplate:
        """The checkpoint's chat template (read once); one-line error if the family or folder has none."""
        if not hasattr(self.processor, "chat"):
            raise ConfigError(f"{self.family or 'these'} models have no chat template; give the prompt itself (--prompt)")
        if self._template is None:
            if self.folder is None:
                raise ConfigError("this pipeline has no checkpoint folder to read a chat template from")
            self._template = load_chat_template(self.folder)
        return self._template

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[M, 3, H, W] -> [M, N, D], each image looked up in (or added to) the feature cache
        (only for processors with `per_image_pixels`: row i of pixel_values is image i alone)."""
        out = []
        for px in pixel_values:
            key = hashlib.sha1(px.contiguous().numpy().tobytes()).hexdigest()
            if key not in self._features:
                with torch.inference_mode():
                    self._features[key] = self.model.encode_images(px[None].to(self.device, self.dtype))
                if len(self._features) > self.feature_cache_size:
                    self._features.popitem(last=False)
            self._features.move_to_end(key)
            out.append(self._features[key])
        return torch.cat(out)

    def _model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The processor's batch on the model's device (floating tensors in its dtype), with cached
        image features in place of the pixels where the processor lays them out per image."""
        batch = dict(batch)
        feats = None
        if getattr(self.processor, "per_image_pixels", False) and batch.get("pixel_values") is not None:
            feats = self.image_features(batch.pop("pixel_values"))
        out = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
               for k, v in batch.items()}
        if feats is not None:
            out["image_features"] = feats
        return out

    def run(self, batch: Mapping[str, torch.Tensor], sampling: SamplingConfig | None = None,
            on_token: Callable[[StreamEvent], None] | None = None, decode_fn=None,
            output_logits: bool = False) -> list[GenerationResult]:
        """Generate for a batch the processor made (left-padded), one result per row (with each
        step's raw logits if `output_logits`, see `GenerationResult`)."""
        return generate(self.model, self.tokenizer, self._model_inputs(batch), sampling or SamplingConfig(),
                        decode_fn or self.decode_fn, on_token, output_logits, cache_multiple=LANES)

    def generate_batch(self, prompts: Sequence[str], images: Sequence, sampling: SamplingConfig | None = None,
                       on_token: Callable[[StreamEvent], None] | None = None,
                       decode_fn=None) -> list[GenerationResult]:
        """One result per prompt; `images[i]` is an image source or a list of them for prompt i."""
        groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in images]
        batch = self.processor(list(prompts), groups, padding_side="left")
        return self.run(batch, sampling, on_token, decode_fn)

    def generate(self, prompt: str, images, sampling: SamplingConfig | None = None,
                 on_token: Callable[[StreamEvent], None] | None = None) -> GenerationResult:
        """Answer one prompt about one image (or a list of images / video frames)."""
        return self.generate_batch([prompt], [images], sampling, on_token)[0]

    def chat(self, messages: Sequence[Mapping], images: Sequence = (), sampling: SamplingConfig | None = None,
             on_token: Callable[[StreamEvent], None] | None = None) -> GenerationResult:
        """Answer a conversation ({"role", "content"} dicts, transformers' format) rendered with the
        checkpoint's chat template; `images` fill its image parts in order."""
        batch = self.processor.chat(self.chat_template, list(messages), list(images))
        return self.run(batch, sampling, on_token)[0]


def _prepack(model: torch.nn.Module) -> None:
    """`prepack_decoder`; one warning line (not an error) where it packs nothing, as an
    unavailable compiler is one line."""
    from vlmkit.generation.prepack import prepack_decoder

    if prepack_decoder(model)["packed"] == 0:
        weight = next(model.parameters())
        logging.getLogger(__name__).warning("prepack needs bfloat16 weights or int8-dyn layers on a CPU with oneDNN "
                                            "(got %s on %s); running with plain weights", weight.dtype,
                                            weight.device.type)


def _scheme(quantize: str | None, group_size: int | None) -> QuantScheme | None:
    if quantize is None:
        if group_size is not None:
            raise ConfigError("a group size needs int4 quantisation (quantize='int4')")
        return None
    return QuantScheme.parse(quantize, group_size)


def load(source: str | Path | None = None, dtype=None, device="cpu", compile: bool = False,
         quantize: str | None = None, group_size: int | None = None, prepack: bool = False) -> Pipeline:
    """`Pipeline.load`: a bundled model name (None = default) or a checkpoint folder."""
    return Pipeline.load(source, dtype=dtype, device=device, compile=compile, quantize=quantize,
                         group_size=group_size, prepack=prepack)
