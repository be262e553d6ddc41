"""minitransformer: a tiny GPT-style language model, built to be read.

Reading order: tokenizer -> config -> attention -> block -> model -> generate -> data
-> pretrain -> evaluate -> checkpoint -> hf_gpt2.
"""

from .attention import KVCache
from .checkpoint import DEFAULT_CHECKPOINT, fingerprint, load_checkpoint, load_weights, save_checkpoint
from .config import ModelConfig
from .data import HELDOUT_TASKS, PRETRAIN_TASKS, TASKS, format_example, format_prompt, get_task, sample_inputs
from .generate import generate
from .model import MiniTransformer
from .tokenizer import CharTokenizer

__all__ = [
    "CharTokenizer", "DEFAULT_CHECKPOINT", "HELDOUT_TASKS", "KVCache", "MiniTransformer", "ModelConfig",
    "PRETRAIN_TASKS", "TASKS", "fingerprint", "format_example", "format_prompt", "generate",
    "get_task", "load_checkpoint", "load_weights", "sample_inputs", "save_checkpoint",
]
