"""Type C processors: prompts + images -> model inputs, identical to transformers' processors
(PIL image backends) for LLaVA 1.5, LLaVA-NeXT, Idefics3 / SmolVLM, InternVL and DeepSeek-VL.

Each is built from the folder transformers saved (`XProcessor.from_folder(path)`: processor_config.json
and/or preprocessor_config.json, tokenizer.json, tokenizer_config.json)."""

from vlmkit.data.processors.common import PromptTokenizer, TypeCProcessor, read_processor_files
from vlmkit.data.processors.deepseek_vl import DeepseekVLProcessor, DeepseekVLProcessorConfig
from vlmkit.data.processors.idefics3 import Idefics3Processor, Idefics3ProcessorConfig
from vlmkit.data.processors.internvl import InternVLProcessor, InternVLProcessorConfig
from vlmkit.data.processors.llava import ClipImageConfig, LlavaProcessor, LlavaProcessorConfig
from vlmkit.data.processors.llava_next import LlavaNextProcessor, LlavaNextProcessorConfig

__all__ = [
    "ClipImageConfig", "DeepseekVLProcessor", "DeepseekVLProcessorConfig", "Idefics3Processor",
    "Idefics3ProcessorConfig", "InternVLProcessor", "InternVLProcessorConfig", "LlavaNextProcessor",
    "LlavaNextProcessorConfig", "LlavaProcessor", "LlavaProcessorConfig", "PromptTokenizer", "TypeCProcessor",
    "read_processor_files",
]
