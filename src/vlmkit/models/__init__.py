"""Model families. Each family folder holds config.py, model.py and hf_mapping.py."""
