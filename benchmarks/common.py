"""What the benchmarks share: the shapes, twin models with identical weights, and the meters.

Every comparison is between *our* model and Hugging Face `transformers`' GPT2LMHeadModel
wrapped by `peft`, built so that both compute the same function: the GPT-2 weights are
copied into ours (`from_gpt2`), and where a method has an exact counterpart in `peft`
the prompt parameters are copied too. The benchmark checks that both give the same loss
before it times anything, so a fast wrong answer cannot pass as a speed-up.

    ours              peft counterpart                          same function?
    soft_prompt       PromptTuningConfig                        yes
    p_tuning_mlp/lstm PromptEncoderConfig (MLP/LSTM)            yes
    deep_prompt       PrefixTuningConfig (no projection)        no: peft has no layerwise
                                                                hidden-state prompt; its
                                                                P-tuning v2 is a prefix
    prefix_tuning     PrefixTuningConfig                        yes
    prefix_tuning_mlp PrefixTuningConfig(prefix_projection)     yes
    lora              LoraConfig(r=4, attn.c_attn, attn.c_proj) yes
    full_finetune     the bare GPT2LMHeadModel, all trainable   yes
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from methods import (
    DeepPromptConfig,
    DeepPromptModel,
    FullFineTuneModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    PTuningConfig,
    PTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
    registry,
)
from methods.lora import LoRAConfig, LoRAModel
from minitransformer import engine
from minitransformer.cli import device_arg, positive_int
from minitransformer.files import check_output_file, write_json
from minitransformer.hf_gpt2 import from_gpt2


@dataclass(frozen=True)
class Shape:
    name: str
    vocab_size: int
    block_size: int
    d_model: int
    n_layer: int
    n_head: int

    def gpt2_config(self):
        from transformers import GPT2Config
        return GPT2Config(vocab_size=self.vocab_size, n_positions=self.block_size, n_embd=self.d_model,
                          n_layer=self.n_layer, n_head=self.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, bos_token_id=self.vocab_size - 1, eos_token_id=self.vocab_size - 1)


SHAPES = {
    "toy": Shape("toy", vocab_size=41, block_size=128, d_model=128, n_layer=4, n_head=4),  # checkpoints/base
    "gpt2-small": Shape("gpt2-small", vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12),
}
METHODS = registry.NAMES  # one spelling each (methods/registry.py)
PROMPT_METHODS = registry.PROMPT_METHODS
ENCODER_HIDDEN = 128  # P-tuning encoder and prefix MLP width, the same on both sides


def hf_gpt2(shape: Shape, seed: int = 0):
    """A randomly initialised GPT2LMHeadModel of this shape (eval mode: no dropout)."""
    from transformers import GPT2LMHeadModel
    torch.manual_seed(seed)
    return GPT2LMHeadModel(shape.gpt2_config()).eval()


def peft_twin(method: str, hf_model, P: int):
    """`hf_model` wrapped by peft's counterpart of `method` (module docstring)."""
    import peft
    if method == "full_finetune":
        return hf_model.requires_grad_(True)
    if method == "soft_prompt":
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)
    elif method.startswith("p_tuning"):
        config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                          encoder_reparameterization_type=method.split("_")[-1].upper(),
                                          encoder_hidden_size=ENCODER_HIDDEN)
    elif method in ("deep_prompt", "prefix_tuning", "prefix_tuning_mlp"):
        config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                         prefix_projection=method == "prefix_tuning_mlp",
                                         encoder_hidden_size=ENCODER_HIDDEN)
    elif method == "lora":
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8.0, lora_dropout=0.0,
                                 target_modules=["attn.c_attn", "attn.c_proj"], fan_in_fan_out=True)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return peft.get_peft_model(hf_model, config)


def our_twin(method: str, theirs, base, P: int):
    """Our model for `method` on `base` (a copy of the GPT-2 weights), holding peft's prompt values where it can."""
    if method == "full_finetune":
        return FullFineTuneModel(base)
    if method == "lora":
        return LoRAModel(base, LoRAConfig(r=4, lora_alpha=8.0))  # B = 0 on both sides: W' = W
    if method == "deep_prompt":
        return DeepPromptModel(base, DeepPromptConfig(num_virtual_tokens=P))
    encoder = theirs.prompt_encoder["default"]
    if method == "soft_prompt":
        ours = SoftPromptModel(base, SoftPromptConfig(num_virtual_tokens=P))
        with torch.no_grad():
            ours.prompt.copy_(encoder.embedding.weight)
        return ours
    if method.startswith("p_tuning"):
        ours = PTuningModel(base, PTuningConfig(num_virtual_tokens=P, encoder_hidden_size=ENCODER_HIDDEN,
                                                encoder_reparameterization_type=method.split("_")[-1].upper()))
        ours.prompt_encoder.load_state_dict(encoder.state_dict())  # same names and layouts as peft's
        return ours
    config = PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=method == "prefix_tuning_mlp",
                                encoder_hidden_size=ENCODER_HIDDEN)
    ours = PrefixTuningModel(base, config)
    with torch.no_grad():
        for name, p in ours.prompt_parameters().items():
            p.copy_(encoder.state_dict()[name])
    return ours


def twins(method: str, shape: Shape, P: int, device: str):
    """(ours, theirs) for one method and shape, on `device`, with the same weights."""
    hf_model = hf_gpt2(shape)
    base = from_gpt2(hf_model)  # before peft wraps it: LoRA renames the layers it adapts
    theirs = peft_twin(method, hf_model, P)
    ours = our_twin(method, theirs, base, P)
    return ours.to(device), theirs.to(device)


def store_frozen_in_bf16(model) -> None:
    """Keep the weights that never change in bfloat16: half their memory, bf16 matrix units,
    and no cast of every weight in every forward. The trainable parameters stay fp32."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)


def same_function(method: str) -> bool:
    return method != "deep_prompt"


# -- memory -----------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_memory_of(fn, device: str) -> int:
    """Bytes that `fn()` needs above what was already in use: its peak minus the level before it.

    CUDA: the caching allocator's peak. CPU: the process's resident high-water mark, reset
    just before `fn` (Linux `/proc/self/clear_refs`), after handing freed heap pages back to
    the OS (`malloc_trim`) so that memory freed earlier cannot hide the new peak.
    """
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM) to the current resident size
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- FLOPs --------------------------------------------------------------------------------------
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense tensor-core peaks, no sparsity


def peak_flops(device: str) -> float | None:
    """The GPU's dense bf16 peak from its spec sheet, or None (CPU, unknown GPU)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def prepends_positions(method: str) -> bool:
    """Whether the method's prompt runs through the blocks as positions (deep prompts run as a prefix)."""
    return method in ("soft_prompt", "p_tuning_mlp", "p_tuning_lstm")


def training_flops(method: str, shape: Shape, B: int, T: int, P: int, graded: int, causal: bool = True) -> float:
    """FLOPs one training step needs, counting multiply and add as two.

    Weight matrices, 12 L C^2 numbers in the blocks plus V C in the head: a forward pass
    costs 2 FLOPs per number per position; the backward pass of a *frozen* matrix only
    computes the input's gradient, another 2, so prompt training costs 4x parameters per
    position (full fine-tuning adds the weight gradients: 6x). The blocks run on P + T
    positions when the prompt is made of positions, on T otherwise; the head runs on the
    `graded` positions of each row, where the loss is taken, and so do the last block's
    output projection and MLP (9 C^2 of its 12 C^2: `engine_model.positions_read`). Attention,
    per layer and query: 4 C FLOPs per visible key forward (q k^T and weights @ v), twice
    that backward; causal masking hides half the keys, and we count only the visible ones
    (`causal=False` counts every key, the convention of PaLM's MFU, Megatron and nanoGPT).
    With a prefix, layer 0's queries and its input's gradient are not needed, and are not
    counted. tests/test_benchmarks.py checks this count against PyTorch's FLOP counter.
    """
    C, L, V = shape.d_model, shape.n_layer, shape.vocab_size
    queries = P + T if prepends_positions(method) else T
    keys_before = 0 if prepends_positions(method) or method in ("lora", "full_finetune") else P
    if causal:
        visible = sum(keys_before + i + 1 for i in range(queries))  # query i sees the keys up to itself
    else:
        visible = queries * (keys_before + queries)
    block_matmuls = 12 * C * C * queries * (L - 1) + 3 * C * C * queries + 9 * C * C * graded  # last: see above
    forward_matmul = 2 * (block_matmuls + V * C * graded) * B
    attention = 4 * C * L * visible * B
    weight_grads = forward_matmul if method == "full_finetune" else 0
    total = 2 * forward_matmul + weight_grads + 3 * attention
    if keys_before:  # a prefix enters at layer 0's keys: below them nothing needs a gradient, so
        total -= 2 * B * (3 * C * C * queries + C * visible)  # no input gradient of c_attn, no dQ there
    return total


# -- running ------------------------------------------------------------------------------------
def base_parser(description: str, methods: tuple[str, ...]) -> argparse.ArgumentParser:
    """The arguments both benchmark scripts take; each adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(methods), choices=list(methods))
    parser.add_argument("--prompt-len", type=positive_int, default=16)
    parser.add_argument("--engine", choices=["on", "off"], default="on",
                        help="on (default): our model with minitransformer.engine's shortcuts, as its POLICY "
                             "runs them on this device; off: the reference path alone")
    parser.add_argument("--disable", nargs="+", default=[], choices=list(engine.POLICY), metavar="SHORTCUT",
                        help=f"with the engine on, switch these shortcuts off (one of: {', '.join(engine.POLICY)})")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file, "
                        "such as the committed benchmarks/results/*.json")
    return parser


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, then check `--out` before anything is timed: a folder, or an existing file without
    --overwrite, is refused at once rather than after minutes of benchmarking."""
    args = parser.parse_args(argv)
    if args.out is not None:
        try:
            check_output_file(args.out, args.overwrite)
        except ValueError as error:
            parser.error(str(error))
    return args


def engine_policy(args) -> dict | None:
    """The engine policy `args` ask for (None: the engine off, the reference path)."""
    return None if args.engine == "off" else engine.without(engine.POLICY, *args.disable)


def with_engine(ours, args, padded_logits: bool = False):
    """`ours` with the engine on as `args` ask (`--engine`, `--disable`); returns it."""
    policy = engine_policy(args)
    return ours if policy is None else engine.enable(ours, policy=policy, padded_logits=padded_logits)


def save_rows(args, rows: list[dict], machine: str) -> None:
    """The rows and how they were made, as strict JSON, written atomically to `args.out`."""
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
            "machine": machine, "threads": torch.get_num_threads()}
    write_json(args.out, {"meta": meta, "rows": rows})


def run_and_save(args, bench_method, format_row) -> list[dict]:
    """Benchmark every (shape, method) of `args`, print a line each, write the rows to `args.out`."""
    rows = []
    for shape_name in args.shapes:
        for method in args.methods:
            rows.append(bench_method(method, SHAPES[shape_name], args))
            print(format_row(rows[-1]), flush=True)
    if args.out:
        save_rows(args, rows, torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor())
    return rows
