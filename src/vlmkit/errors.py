"""Error types that vlmkit raises for bad user input.

Every error a user can cause (a bad image, a bad checkpoint folder, a prompt that does not fit)
is one of these, with a one-line message that names the cause. The CLI catches `VlmkitError`,
prints its message on one line and exits with code 2; anything else is a bug in vlmkit.
"""


class VlmkitError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class ImageError(VlmkitError):
    """An image is missing, corrupt, too large or of an unsupported kind."""


class CheckpointError(VlmkitError):
    """A checkpoint folder has wrong, missing, extra or mis-shaped files or keys."""


class TokenizerError(VlmkitError):
    """A tokenizer is missing or lacks a token the model needs (e.g. `<image>`)."""


class PromptTooLongError(VlmkitError):
    """A prompt (with its image tokens) does not fit in the model's context."""


class ConfigError(VlmkitError):
    """A config value or override is invalid."""


class ParseError(VlmkitError):
    """Generated text could not be parsed into the structured result of a task."""


class DataError(VlmkitError):
    """A dataset, manifest or shard is unreadable or malformed."""


class OutputError(VlmkitError):
    """An output target would destroy existing data (non-empty folder, existing file) or is unwritable."""
