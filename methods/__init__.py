"""Prompt-based parameter-efficient fine-tuning, one method a file.

Reading order: prompt_model (what all methods share), token_init (starting a prompt from
real tokens) -> soft_prompt -> p_tuning -> deep_prompt -> prefix_tuning; then train (the toy
loop), freezing (the proof that only the prompt trains), prompt_io (saving a prompt),
serving (many tasks' prompts in one batch), full_finetune (the reference point); registry (every
method by name, once: what the CLI, experiments, benchmarks and checkpoints read).
"""

from .deep_prompt import DeepPromptConfig, DeepPromptModel
from .freezing import FreezingReport, check_freezing
from .full_finetune import FullFineTuneConfig, FullFineTuneModel
from .p_tuning import PTuningConfig, PTuningModel
from .prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from .prompt_io import load_prompt, load_train_state, save_prompt
from .prompt_model import PromptConfig, PromptModel
from .serving import PromptRegistry
from .soft_prompt import SoftPromptConfig, SoftPromptModel
from .train import TrainConfig, TrainResult, TrainState, train

__all__ = [
    "DeepPromptConfig", "DeepPromptModel", "FreezingReport", "FullFineTuneConfig", "FullFineTuneModel",
    "PTuningConfig", "PTuningModel", "PrefixTuningConfig", "PrefixTuningModel", "PromptConfig", "PromptModel",
    "PromptRegistry", "SoftPromptConfig", "SoftPromptModel", "TrainConfig", "TrainResult", "TrainState",
    "check_freezing", "load_prompt", "load_train_state", "save_prompt", "train",
]
