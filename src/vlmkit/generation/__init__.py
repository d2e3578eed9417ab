"""Generation: sampling, static-cache prefill/decode, the generate loop and streaming."""

from vlmkit.generation.generate import GenerationResult, StreamEvent, generate, generate_stream
from vlmkit.generation.sampling import SamplingConfig, sample_next

__all__ = ["GenerationResult", "SamplingConfig", "StreamEvent", "generate", "generate_stream", "sample_next"]
