"""Model families. Each family folder holds config.py, model.py, hf_mapping.py and family.py (its
registry record, `vlmkit.models.registry`); shared layers live in common/. A leaf package: it
imports torch, the standard library, `vlmkit.models.*` and `vlmkit.errors` only."""
