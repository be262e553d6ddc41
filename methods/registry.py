"""Every method by name, once: what the CLI, the experiments, the benchmarks, serving and the
checkpoints read.

    name                label                           trained by      default lr
    soft_prompt         soft prompt                     SoftPromptModel    1e-1
    p_tuning_mlp        P-tuning (MLP)                  PTuningModel       1e-2
    p_tuning_lstm       P-tuning (LSTM)                 PTuningModel       1e-2
    deep_prompt         deep prompt                     DeepPromptModel    1e-1
    prefix_tuning       prefix tuning                   PrefixTuningModel  2e-1
    prefix_tuning_mlp   prefix tuning (MLP reparam.)    PrefixTuningModel  1e-2
    lora                LoRA r=4                        LoRAModel          1e-2
    full_finetune       full fine-tuning                FullFineTuneModel  1e-3

The learning rates were chosen by a sweep on the default task (compare.py). `build(base, s)`
takes the comparison's settings (compare.RunSettings: prompt_len, seed, init, ...). A
checkpoint names its model class by `method_name` (the class's own name in this table:
`prefix_tuning` for both prefix variants, whose config says whether an MLP is on).
Older result files spelled prefix tuning with an MLP `prefix_mlp` (benchmarks) or
`prefix_projection`: `canonical()` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minitransformer import MiniTransformer

from .deep_prompt import DeepPromptConfig, DeepPromptModel
from .full_finetune import FullFineTuneModel
from .lora import LoRAConfig, LoRAModel
from .p_tuning import PTuningConfig, PTuningModel
from .prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from .prompt_model import PromptModel
from .soft_prompt import SoftPromptConfig, SoftPromptModel


@dataclass(frozen=True)
class Method:
    build: Callable[[MiniTransformer, object], PromptModel]  # (base, settings) -> the model to train
    lr: float  # its default learning rate
    label: str  # for tables
    short_label: str  # for plot legends
    model_class: type[PromptModel]
    prompt: bool = True  # a prompt method (not a reference point: LoRA, full fine-tuning)


def _soft(base, s):
    from .compare import task_name_text  # (compare imports this file)
    text = (s.init_text or task_name_text(s.task, s.prompt_len, s.seed)) if s.init == "TEXT" else None
    return SoftPromptModel(base, SoftPromptConfig(s.prompt_len, s.init, text, seed=s.seed))


METHODS: dict[str, Method] = {
    "soft_prompt": Method(_soft, 1e-1, "soft prompt", "soft prompt", SoftPromptModel),
    "p_tuning_mlp": Method(lambda b, s: PTuningModel(b, PTuningConfig(s.prompt_len, "MLP", seed=s.seed)),
                           1e-2, "P-tuning (MLP)", "P-tuning (MLP)", PTuningModel),
    "p_tuning_lstm": Method(lambda b, s: PTuningModel(b, PTuningConfig(s.prompt_len, "LSTM", seed=s.seed)),
                            1e-2, "P-tuning (LSTM)", "P-tuning (LSTM)", PTuningModel),
    "deep_prompt": Method(lambda b, s: DeepPromptModel(b, DeepPromptConfig(s.prompt_len, seed=s.seed)),
                          1e-1, "deep prompt", "deep prompt", DeepPromptModel),
    "prefix_tuning": Method(lambda b, s: PrefixTuningModel(b, PrefixTuningConfig(s.prompt_len, seed=s.seed)),
                            2e-1, "prefix tuning", "prefix", PrefixTuningModel),
    "prefix_tuning_mlp": Method(
        lambda b, s: PrefixTuningModel(b, PrefixTuningConfig(s.prompt_len, prefix_projection=True, seed=s.seed)),
        1e-2, "prefix tuning (MLP reparam.)", "prefix + MLP", PrefixTuningModel),
    "lora": Method(lambda b, s: LoRAModel(b, LoRAConfig(r=4, seed=s.seed)), 1e-2, "LoRA r=4", "LoRA r=4", LoRAModel,
                   prompt=False),
    "full_finetune": Method(lambda b, s: FullFineTuneModel(b), 1e-3, "full fine-tuning", "full fine-tuning",
                            FullFineTuneModel, prompt=False),
}
NAMES = tuple(METHODS)
PROMPT_METHODS = tuple(name for name, m in METHODS.items() if m.prompt)
DEFAULT_METHODS = ("soft_prompt", "p_tuning_mlp", "p_tuning_lstm", "deep_prompt", "prefix_tuning", "lora",
                   "full_finetune")  # what `python -m methods` compares
OLD_NAMES = {"prefix_mlp": "prefix_tuning_mlp", "prefix_projection": "prefix_tuning_mlp"}


def canonical(name: str) -> str:
    """The registry's spelling of a method name read from an older file."""
    return OLD_NAMES.get(name, name)


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def checkpoint_class(method_name: str) -> type[PromptModel] | None:
    """The class a checkpoint's `method` names (its `method_name`), or None."""
    return next((m.model_class for m in METHODS.values() if m.model_class.method_name == method_name), None)
