"""What `vlmkit create` writes beside the weights so that a family's processor reads the folder.

A family's registry record names a function `(model_cfg) -> ProcessorFiles` (`processor_files`);
`vlmkit.weights.create` adds `special_tokens` to the tokenizer it trains, writes `processor_config`
as processor_config.json (the flat pre-5.x layout, beside preprocessor_config.json: both vlmkit
and transformers read it) and puts `chat_template` in tokenizer_config.json and `named_tokens`
there as "extra_special_tokens" (transformers makes each an attribute of the tokenizer).

Nothing here may depend on token ids: the tokenizer is built from `special_tokens` afterwards and
the config takes its ids from it (`FamilySpec.with_tokenizer`).
"""

from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True, kw_only=True)
class ProcessorFiles:
    """special_tokens: tokens the family's prompts use (added as special tokens when missing).
    processor_config: the processor's fields (processor_config.json), {} for none.
    chat_template: Jinja text of the checkpoint's chat template, or None.
    named_tokens: {attribute: token} a processor reads from the tokenizer (InternVL's
        `tokenizer.context_image_token`); the tokens are added as special tokens too."""

    special_tokens: tuple[str, ...] = ()
    processor_config: dict = field(default_factory=dict)
    chat_template: str | None = None
    named_tokens: dict[str, str] = field(default_factory=dict)


def bundled_chat_template(name: str) -> str:
    """A published checkpoint's chat template shipped in vlmkit/assets/chat_templates/`name`.jinja."""
    return resources.files("vlmkit").joinpath("assets", "chat_templates", f"{name}.jinja").read_text("utf-8")
