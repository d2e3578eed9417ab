"""Type C processors (LLaVA, LLaVA-NeXT, Idefics3/SmolVLM, InternVL): prompts + images -> model inputs,
identical to transformers' processors (PIL image backends)."""

from vlmkit.data.processors.common import PromptTokenizer, read_processor_files
from vlmkit.data.processors.deepseek_vl import DeepseekVLProcessor, DeepseekVLProcessorConfig
from vlmkit.data.processors.idefics3 import Idefics3Processor, Idefics3ProcessorConfig
from vlmkit.data.processors.internvl import InternVLProcessor, InternVLProcessorConfig
from vlmkit.data.processors.llava import ClipImageConfig, LlavaProcessor, LlavaProcessorConfig
from vlmkit.data.processors.llava_next import LlavaNextProcessor, LlavaNextProcessorConfig

__all__ = ["ClipImageConfig", "DeepseekVLProcessor", "DeepseekVLProcessorConfig", "Idefics3Processor", "Idefics3ProcessorConfig", "InternVLProcessor",
           "InternVLProcessorConfig", "LlavaNextProcessor", "LlavaNextProcessorConfig", "LlavaProcessor",
           "LlavaProcessorConfig", "PromptTokenizer", "read_processor_files"]
