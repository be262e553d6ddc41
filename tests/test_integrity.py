"""Nothing lost, nothing silently wrong: damaged files refused, bad configs refused, runs resumable.

Each test is one claim of checkpoint.py, prompt_io.py, train.py or a method's config, on the
small random model (seconds each).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random

import pytest
import torch
from conftest import METHOD_FACTORIES, P
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from methods import (
    DeepPromptConfig,
    FullFineTuneModel,
    PrefixTuningConfig,
    PTuningConfig,
    SoftPromptConfig,
    SoftPromptModel,
    TrainConfig,
    load_prompt,
    load_train_state,
    prompt_io,
    save_prompt,
    train,
)
from methods.lora import LoRAConfig, LoRAModel
from minitransformer import DEFAULT_CHECKPOINT, fingerprint, load_checkpoint, save_checkpoint
from minitransformer import checkpoint as ckpt
from minitransformer.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_content, tensors_sha256

IDS = torch.tensor([[5, 9, 2, 30, 7, 3], [11, 3, 8, 1, 4, 12]])


def data_offset(path) -> int:
    """Where a safetensors file's tensor data starts: 8-byte little-endian header length, the JSON header, data."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip_byte(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01  # the lowest mantissa bit of a float32: still a finite, plausible number
    path.write_bytes(bytes(data))


def header_of(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def moved(model):
    """The model with its trainable parameters moved off their initialisation (as training would)."""
    with torch.no_grad():
        for p in model.prompt_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    return model


# -- the hash ----------------------------------------------------------------------------------
def test_the_hash_is_exactly_the_documented_one():
    tensors = {"b": torch.arange(3, dtype=torch.int64), "a": torch.ones(2, 2)}
    digest = hashlib.sha256()
    digest.update(b"a\tfloat32\t[2, 2]\n" + torch.ones(4).numpy().tobytes())
    digest.update(b"b\tint64\t[3]\n" + torch.arange(3).numpy().tobytes())
    assert tensors_sha256(tensors) == digest.hexdigest()
    assert tensors_sha256({"a": torch.ones(2, 2).to(torch.float64)}) != tensors_sha256({"a": torch.ones(2, 2)})
    assert tensors_sha256({"a": torch.ones(4)}) != tensors_sha256({"a": torch.ones(2, 2)})


def test_the_shipped_base_records_its_hash_and_keeps_its_fingerprint(base_model):
    content = read_content(DEFAULT_CHECKPOINT)
    assert content["tensors_sha256"] == tensors_sha256(load_file(DEFAULT_CHECKPOINT / WEIGHTS_FILE))
    assert fingerprint(base_model) == "6f482b7813f9fcf4"  # the id every shipped prompt and lesson refers to


# -- damaged prompt files ----------------------------------------------------------------------
def test_one_flipped_byte_of_a_prompt_files_tensor_data_is_refused(small_model, tmp_path):
    path = save_prompt(moved(SoftPromptModel(small_model, SoftPromptConfig(P))), tmp_path / "p.safetensors")
    flip_byte(path, data_offset(path) + 4)
    with pytest.raises(ValueError, match=r"p\.safetensors do not match the SHA-256.*damaged.*restore it"):
        load_prompt(small_model, path)


def test_a_truncated_prompt_file_is_refused_saying_what_to_do(small_model, tmp_path):
    path = save_prompt(SoftPromptModel(small_model, SoftPromptConfig(P)), tmp_path / "p.safetensors")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"p\.safetensors is not a readable.*truncated: restore it from a copy"):
        load_prompt(small_model, path)


def test_a_prompt_file_without_the_hash_is_refused_naming_the_migration(small_model, tmp_path):
    model = moved(SoftPromptModel(small_model, SoftPromptConfig(P)))
    path = save_prompt(model, tmp_path / "old.safetensors")
    header = {k: v for k, v in header_of(path).items() if k not in ("tensors_sha256", "kind")}
    save_file(load_file(path), path, metadata=header)  # as files were written before the hash
    with pytest.raises(ValueError, match=r"records no tensors_sha256.* python -m methods\.prompt_io add-hash"):
        load_prompt(small_model, path)
    prompt_io.add_hash(path)  # the one-time migration
    assert header_of(path)["kind"] == "serving"
    assert torch.equal(load_prompt(small_model, path)(IDS), model(IDS))


def test_a_prompt_holding_nan_is_never_saved(small_model, tmp_path):
    model = SoftPromptModel(small_model, SoftPromptConfig(P))
    with torch.no_grad():
        model.prompt[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'prompt' holds NaN or inf.*nothing was written"):
        save_prompt(model, tmp_path / "p.safetensors")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_prompt_file_whole(small_model, tmp_path, monkeypatch):
    model = moved(SoftPromptModel(small_model, SoftPromptConfig(P)))
    path = save_prompt(model, tmp_path / "p.safetensors")

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(prompt_io, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_prompt(moved(model), path)
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary file left behind
    load_prompt(small_model, path)  # the old file, whole


# -- damaged base checkpoints ------------------------------------------------------------------
def test_one_flipped_byte_of_a_base_checkpoints_weights_is_refused(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    flip_byte(weights, data_offset(weights) + 4)
    with pytest.raises(ValueError, match=r"checkpoint.*do not match the SHA-256.*damaged.*restore it"):
        load_checkpoint(tmp_path)


def test_a_truncated_base_checkpoint_is_refused_saying_what_to_do(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable.*truncated.*restore it"):
        load_checkpoint(tmp_path)


def test_nan_weights_in_a_base_checkpoint_are_refused(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    state = load_file(tmp_path / WEIGHTS_FILE)
    state["wte.weight"][3, 1] = float("nan")
    save_file(state, tmp_path / WEIGHTS_FILE)  # a diverged model, with a hash that matches
    content = read_content(tmp_path)
    content["tensors_sha256"] = tensors_sha256(state)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(content))
    with pytest.raises(ValueError, match="NaN or inf in weight wte.weight.*load an earlier checkpoint"):
        load_checkpoint(tmp_path)


def test_a_model_with_nan_weights_is_never_saved(small_model, tmp_path):
    broken = copy.deepcopy(small_model)
    with torch.no_grad():
        broken.wte.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="wte.weight holds NaN or inf.*nothing was written"):
        save_checkpoint(broken, tmp_path / "ck")
    assert not (tmp_path / "ck" / WEIGHTS_FILE).exists()


def test_a_base_checkpoint_without_the_hash_is_refused_naming_the_migration(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    content = read_content(tmp_path)
    del content["tensors_sha256"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(content))  # as checkpoints were written before the hash
    with pytest.raises(ValueError, match=r"records no tensors_sha256.* python -m minitransformer\.checkpoint "
                                         r"add-hash"):
        load_checkpoint(tmp_path)
    ckpt.main(["add-hash", str(tmp_path)])  # the one-time migration
    assert torch.equal(load_checkpoint(tmp_path)(IDS), small_model(IDS))


# -- configs -----------------------------------------------------------------------------------
TRAIN = {"task": "rev", "n_train": 40}
BAD_CONFIGS = {  # name: (build, what the message must say: the field and the fix)
    "prompt_layers=0": (lambda: DeepPromptConfig(P, prompt_layers=0), "prompt_layers.*pass None for prompts"),
    "prompt_layers<0": (lambda: DeepPromptConfig(P, prompt_layers=-2), "prompt_layers must be an integer >= 1"),
    "prompt_layers float": (lambda: DeepPromptConfig(P, prompt_layers=1.5), "prompt_layers must be an integer"),
    "num_virtual_tokens float": (lambda: SoftPromptConfig(2.5), "num_virtual_tokens must be an integer.*e.g."),
    "LoRA r=0": (lambda: LoRAConfig(r=0), "r must be an integer >= 1, got 0; pass the rank"),
    "LoRA r float": (lambda: LoRAConfig(r=2.5), "r must be an integer"),
    "LoRA alpha=0": (lambda: LoRAConfig(lora_alpha=0), "lora_alpha must be a positive number.*pass e.g."),
    "LoRA alpha<0": (lambda: LoRAConfig(lora_alpha=-8.0), "lora_alpha must be a positive number"),
    "LoRA alpha nan": (lambda: LoRAConfig(lora_alpha=math.nan), "lora_alpha must be a positive number"),
    "LoRA no targets": (lambda: LoRAConfig(target_modules=()), "target_modules must be one or more.*pass e.g."),
    "P-tuning encoder type": (lambda: PTuningConfig(P, "GRU"), "encoder_reparameterization_type.*pass one of"),
    "P-tuning hidden 0": (lambda: PTuningConfig(P, encoder_hidden_size=0), "encoder_hidden_size.*pass the"),
    "P-tuning layers 0": (lambda: PTuningConfig(P, "LSTM", encoder_num_layers=0), "encoder_num_layers.*pass"),
    "P-tuning dropout 1": (lambda: PTuningConfig(P, "LSTM", encoder_dropout=1.0), "encoder_dropout.*pass a"),
    "prefix hidden 0": (lambda: PrefixTuningConfig(P, encoder_hidden_size=0), "encoder_hidden_size.*pass the"),
    "lr=0": (lambda: TrainConfig(lr=0.0), "lr must be a finite number > 0, got 0.0; pass a positive"),
    "lr<0": (lambda: TrainConfig(lr=-1e-3), "lr must be a finite number > 0"),
    "lr nan": (lambda: TrainConfig(lr=math.nan), "lr must be a finite number > 0"),
    "lr inf": (lambda: TrainConfig(lr=math.inf), "lr must be a finite number > 0"),
    "steps=0": (lambda: TrainConfig(steps=0), "steps must be an integer >= 1, got 0; pass --steps 1 or more"),
    "batch_size=0": (lambda: TrainConfig(batch_size=0), "batch_size must be an integer >= 1.*--batch-size"),
    "batch_size>n_train": (lambda: TrainConfig(**TRAIN, batch_size=41),
                           "--batch-size 41 is larger than the 40 training inputs.*pass --batch-size 40 or less"),
    "eval_every=0": (lambda: TrainConfig(eval_every=0), "eval_every must be an integer >= 1.*--eval-every"),
    "n_val=0": (lambda: TrainConfig(n_val=0), "n_val must be an integer >= 1.*pass n_val >= 1"),
    "n_test=0": (lambda: TrainConfig(n_test=0), "n_test must be an integer >= 1.*pass n_test >= 1"),
    "weight_decay<0": (lambda: TrainConfig(weight_decay=-0.1), "weight_decay must be a finite number >= 0.*pass 0"),
    "warmup_steps<0": (lambda: TrainConfig(warmup_steps=-1), "warmup_steps must be an integer >= 0.*pass 0"),
    "unknown task": (lambda: TrainConfig(task="nope"), "unknown task 'nope'; pass one of"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_is_refused_at_construction_naming_the_fix(case):
    build, message = BAD_CONFIGS[case]
    with pytest.raises(ValueError, match=message):
        build()


def test_a_lora_target_given_as_one_string_is_one_name_not_its_characters(small_model):
    model = LoRAModel(small_model, LoRAConfig(target_modules="attn.c_attn"))
    assert model.targets == [f"blocks.{i}.attn.c_attn" for i in range(small_model.config.n_layer)]


def test_an_unknown_lora_target_is_refused_even_beside_a_known_one(small_model):
    with pytest.raises(ValueError, match=r"\['mlp.c_fx'\] match no Linear layer.*pass names from: attn.c_attn"):
        LoRAModel(small_model, LoRAConfig(target_modules=("attn.c_attn", "mlp.c_fx")))


# -- bf16 and full fine-tuning -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["soft_prompt", "prefix_projection"])
def test_a_prompt_on_a_bf16_base_saves_and_loads(name, small_model, tmp_path):
    base = copy.deepcopy(small_model).to(torch.bfloat16)
    model = moved(METHOD_FACTORIES[name](base)).to(torch.bfloat16)
    loaded = load_prompt(base, save_prompt(model, tmp_path / "bf16.safetensors"))
    assert torch.equal(loaded(IDS), model(IDS))


def test_a_fp32_prompt_on_a_bf16_base_is_refused_naming_the_dtype(small_model, tmp_path):
    path = save_prompt(SoftPromptModel(small_model, SoftPromptConfig(P)), tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="saved with a torch.float32 base, this base is torch.bfloat16"):
        load_prompt(copy.deepcopy(small_model).to(torch.bfloat16), path)


def test_a_full_fine_tune_saves_as_a_base_checkpoint_and_reloads_with_the_same_logits(small_model, tmp_path):
    model = moved(FullFineTuneModel(small_model))
    with pytest.raises(ValueError, match=r"save_checkpoint\(model\.base, directory\)"):
        save_prompt(model, tmp_path / "full.safetensors")
    save_checkpoint(model.base, tmp_path / "full")
    reloaded = FullFineTuneModel(load_checkpoint(tmp_path / "full"))
    assert torch.equal(reloaded(IDS), model(IDS))
    assert not torch.equal(model(IDS), small_model(IDS))  # it really was trained away from the base


# -- training and serving checkpoints ----------------------------------------------------------
TINY_RUN = TrainConfig(task="rev", steps=6, batch_size=4, lr=1e-2, warmup_steps=2, weight_decay=0.01, eval_every=2,
                       n_train=16, n_val=2, n_test=2)


@pytest.mark.parametrize("name", ["prefix_projection", "soft_prompt", "p_tuning_lstm"])
def test_a_training_checkpoint_resumes_bitwise_exactly(name, small_model, tmp_path):
    straight = METHOD_FACTORIES[name](small_model)
    whole = train(straight, TINY_RUN, progress=False)

    paused = METHOD_FACTORIES[name](small_model)
    first = train(paused, TINY_RUN, progress=False, stop_after=3)
    path = save_prompt(paused, tmp_path / "run.safetensors", kind="training", state=first.state)
    torch.manual_seed(12345)  # whatever happens between the two halves ...
    random.seed(12345)
    fresh = load_prompt(small_model, path)  # ... in a fresh model, from the file alone
    rest = train(fresh, TINY_RUN, progress=False, resume=load_train_state(path))

    assert rest.loss == whole.loss and len(whole.loss) == TINY_RUN.steps
    assert (rest.val_steps, rest.val_exact_match) == (whole.val_steps, whole.val_exact_match)
    assert rest.test_exact_match == whole.test_exact_match
    own, theirs = fresh.prompt_parameters(), straight.prompt_parameters()
    assert own.keys() == theirs.keys() and all(torch.equal(own[n], theirs[n]) for n in own)


def test_the_header_says_training_or_serving(small_model, tmp_path):
    model = METHOD_FACTORIES["prefix_projection"](small_model)
    result = train(model, TINY_RUN, progress=False, stop_after=2)
    serving = header_of(save_prompt(model, tmp_path / "serve.safetensors"))
    training = header_of(save_prompt(model, tmp_path / "train.safetensors", kind="training", state=result.state))
    assert (serving["kind"], training["kind"]) == ("serving", "training")
    with safe_open(str(tmp_path / "train.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert {"transform.0.weight", "optimizer/transform.0.weight/exp_avg", "rng/batch", "rng/torch"} <= names
    assert json.loads(training["train_state"])["step"] == 2


def test_the_serving_checkpoint_of_a_prefix_mlp_gives_the_trained_models_logits(small_model, tmp_path):
    model = METHOD_FACTORIES["prefix_projection"](small_model)
    train(model, TINY_RUN, progress=False, stop_after=2)
    path = save_prompt(model, tmp_path / "serve.safetensors", kind="serving")
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["embedding.weight"]  # the MLP's output only
    served = load_prompt(small_model, path)
    assert not served.config.prefix_projection
    assert torch.equal(served(IDS), model(IDS))


def test_a_serving_checkpoint_has_no_training_state_to_resume(small_model, tmp_path):
    path = save_prompt(METHOD_FACTORIES["prefix_projection"](small_model), tmp_path / "serve.safetensors")
    with pytest.raises(ValueError, match="serving checkpoint.*holds no training state; resume from.*"
                                         "kind='training'"):
        load_train_state(path)
    with pytest.raises(ValueError, match="needs the run's state: pass state=result.state"):
        save_prompt(METHOD_FACTORIES["soft_prompt"](small_model), tmp_path / "t.safetensors", kind="training")


def test_a_run_resumes_only_under_its_own_config(small_model):
    model = METHOD_FACTORIES["soft_prompt"](small_model)
    state = train(model, TINY_RUN, progress=False, stop_after=2).state
    with pytest.raises(ValueError, match=r"another config:.*'lr': \(0.01, 0.02\)"):
        train(model, TrainConfig(**{**TINY_RUN.__dict__, "lr": 2e-2}), progress=False, resume=state)
