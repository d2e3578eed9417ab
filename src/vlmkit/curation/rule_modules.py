"""Importing this registers every curation rule in `vlmkit.curation.rules.RULES` (in this order)."""

from vlmkit.curation import balance, dedup, rules_image, rules_itm, rules_multimodal, rules_text  # noqa: F401
