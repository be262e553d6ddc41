"""Where a training run stands, so it can stop and resume exactly (methods/train.py).

A step of `train` depends on more than the prompt's parameters: AdamW's two moments and
step count per parameter, the batch sampler's random state (which inputs come next), torch's
random state (dropout), and the cosine schedule's position (the step). `TrainState` holds
all of it; `capture_state` takes it at the end of a run that stopped (`stop_after=N`), and
`restore_state` puts it back, refusing a state of another config or another set of
parameters. A training checkpoint (`prompt_io.save_prompt(..., kind="training")`) stores
one in a file.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from .prompt_model import PromptModel

if TYPE_CHECKING:  # (train.py imports this file)
    from .train import TrainConfig, TrainResult


@dataclass
class TrainState:
    """Where a run stands after `step` steps: everything, besides the model's own parameters,
    that the next step depends on. `train(model, cfg, resume=state)` continues from it exactly."""

    step: int  # steps done
    config: dict  # asdict(TrainConfig) of the run: it resumes only under the same config (schedule, data)
    param_names: list[str]  # the optimizer's parameters in order (its state is indexed by position)
    optimizer: dict  # the AdamW state_dict: each parameter's moments and step count, the groups' settings
    batch_rng: tuple  # random.Random.getstate() of the batch sampler: the next batches
    torch_rng: torch.Tensor  # torch.get_rng_state(): dropout (e.g. an LSTM encoder's)
    cuda_rng: torch.Tensor | None = None  # the same on the GPU, for a run there
    loss: list[float] = field(default_factory=list)  # the curves so far
    val_steps: list[int] = field(default_factory=list)
    val_exact_match: list[float] = field(default_factory=list)
    initial_val_exact_match: float = 0.0
    seconds: float = 0.0  # training time so far


def trainable_parameters(model: PromptModel) -> dict[str, torch.nn.Parameter]:
    """The method's own parameters that train, by name, in the optimizer's order."""
    return {n: p for n, p in model.prompt_parameters().items() if p.requires_grad}


def capture_state(model: PromptModel, cfg: TrainConfig, step: int, optimizer: torch.optim.Optimizer,
                  rng: random.Random, result: TrainResult) -> TrainState:
    """The state after `step` steps (the optimizer's tensors are its own, not copies: the loop is done with them)."""
    device = next(model.parameters()).device
    return TrainState(step=step, config=asdict(cfg), param_names=list(trainable_parameters(model)),
                      optimizer=optimizer.state_dict(), batch_rng=rng.getstate(), torch_rng=torch.get_rng_state(),
                      cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                      loss=list(result.loss), val_steps=list(result.val_steps),
                      val_exact_match=list(result.val_exact_match),
                      initial_val_exact_match=result.initial_val_exact_match, seconds=result.seconds)


def restore_state(model: PromptModel, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                  state: TrainState) -> random.Random:
    """Put the optimizer and the random generators back where `state` left them; return the batch sampler.

    Refused: a state of another config (the schedule and the data would differ) or of
    another set of parameters (another method, or a collapsed prompt).
    """
    changed = {k: (v, asdict(cfg).get(k)) for k, v in state.config.items() if asdict(cfg).get(k) != v}
    if changed:
        raise ValueError(f"the run to resume was trained with another config: (saved, given) differ in {changed}; "
                         "resume with the config the run started with")
    names = list(trainable_parameters(model))
    if names != state.param_names:
        raise ValueError(f"the run to resume trained the parameters {state.param_names}, this model has {names}; "
                         "resume on the model of a training checkpoint (load_prompt of a kind='training' file)")
    optimizer.load_state_dict(state.optimizer)
    rng = random.Random()
    rng.setstate(state.batch_rng)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None:
        torch.cuda.set_rng_state(state.cuda_rng, next(model.parameters()).device)
    return rng


def state_to_tensors(state: TrainState) -> tuple[dict[str, torch.Tensor], dict]:
    """A `TrainState` as tensors (optimizer moments, random states) plus a JSON-ready dict (the rest).

    Tensor names: `optimizer/<parameter>/<key>` (e.g. `optimizer/prompt/exp_avg`), `rng/batch`
    (the batch sampler's 625 Mersenne Twister words), `rng/torch` and `rng/cuda`. A `/` never
    occurs in a parameter name, so these never collide with the method's own tensors.
    """
    tensors = {}
    for index, name in enumerate(state.param_names):
        for key, value in state.optimizer["state"].get(index, {}).items():
            tensors[f"optimizer/{name}/{key}"] = torch.as_tensor(value)
    version, words, gauss_next = state.batch_rng
    tensors["rng/batch"] = torch.tensor(words, dtype=torch.int64)
    tensors["rng/torch"] = state.torch_rng
    if state.cuda_rng is not None:
        tensors["rng/cuda"] = state.cuda_rng
    header = {"step": state.step, "config": state.config, "param_names": state.param_names,
              "param_groups": state.optimizer["param_groups"], "batch_rng": [version, gauss_next],
              "loss": state.loss, "val_steps": state.val_steps, "val_exact_match": state.val_exact_match,
              "initial_val_exact_match": state.initial_val_exact_match, "seconds": state.seconds}
    return tensors, header


def state_from_tensors(saved: dict, tensors: dict[str, torch.Tensor]) -> TrainState:
    """The inverse of `state_to_tensors` (a missing entry raises KeyError, a bad one TypeError/ValueError)."""
    optimizer_state = {}
    for index, name in enumerate(saved["param_names"]):
        prefix = f"optimizer/{name}/"
        entry = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        if entry:
            optimizer_state[index] = entry
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in saved["param_groups"]]
    version, gauss_next = saved["batch_rng"]
    batch_rng = (version, tuple(tensors["rng/batch"].tolist()), gauss_next)
    return TrainState(step=saved["step"], config=saved["config"], param_names=saved["param_names"],
                      optimizer={"state": optimizer_state, "param_groups": groups}, batch_rng=batch_rng,
                      torch_rng=tensors["rng/torch"], cuda_rng=tensors.get("rng/cuda"), loss=saved["loss"],
                      val_steps=saved["val_steps"], val_exact_match=saved["val_exact_match"],
                      initial_val_exact_match=saved["initial_val_exact_match"], seconds=saved["seconds"])
