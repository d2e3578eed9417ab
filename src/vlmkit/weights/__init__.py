"""Checkpoint IO: safetensors reading/writing, strict key conversion, HF folders."""
