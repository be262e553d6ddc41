"""Reading an understanding task's answer: a verbalizer, or a linear head (P-tuning v2's choice).

Two ways to turn a prompted model into a classifier or a tagger (Liu et al. 2022, §3.3):

- `Verbalizer`: the P-tuning v1 / Lester et al. way. Each label is a word of the vocabulary
  (`y`/`n`; `b`/`i`/`o`), and the label's score is that word's logit from the frozen,
  tied LM head, read where the label would come next (`=` for a class; each character
  for its tag). Nothing new is trained but the prompt.
- `LinearHead`: the P-tuning v2 / PEFT way ("we apply a randomly-initialized
  classification head on top of the tokens as in BERT"): a linear map of the final hidden
  states, the last real token for a class, every real token for a tag. It trains with the
  prompt and counts as trainable. As in `transformers`, the classifier has no bias
  (GPT2ForSequenceClassification's `score`) and the tagger has one (GPT2ForTokenClassification's
  `classifier`).

`NLUModel(method, head, task)` joins a method (any prompt method, LoRA or full fine-tuning)
and a head. The base model knows nothing of heads: it hands out its final hidden states
(`MiniTransformer.hidden_states`) and the head reads them.
"""

from __future__ import annotations

import torch
from torch import nn

from minitransformer import CharTokenizer

from .nlu_tasks import CLASSIFICATION, get_nlu_task
from .prompt_model import PromptModel

HEADS = ("linear", "verbalizer")


class LinearHead(nn.Module):
    """(..., C) hidden states -> (..., n_labels) label logits; N(0, 0.02) weights from `seed`, zero bias."""

    reads = "hidden"

    def __init__(self, d_model: int, n_labels: int, bias: bool, seed: int = 0) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, n_labels, bias=bias)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(n_labels, d_model, generator=generator) * 0.02)
            if bias:
                self.score.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden)  # (..., C) -> (..., K)


class Verbalizer(nn.Module):
    """(..., V) LM logits -> (..., n_labels): the logits of the label words, nothing trained."""

    reads = "logits"

    def __init__(self, label_words: tuple[str, ...], tokenizer: CharTokenizer | None = None) -> None:
        super().__init__()
        tokenizer = tokenizer or CharTokenizer()
        if any(len(w) != 1 for w in label_words) or len(set(label_words)) != len(label_words):
            raise ValueError(f"label words must be distinct single characters (one token each), got {label_words}")
        self.register_buffer("word_ids", torch.tensor(tokenizer.encode("".join(label_words))), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.word_ids]  # (..., V) -> (..., K)


def make_head(kind: str, task: str, d_model: int, seed: int = 0) -> LinearHead | Verbalizer:
    """The head `kind` ("linear" or "verbalizer") for `task`."""
    spec = get_nlu_task(task)
    if kind == "linear":
        return LinearHead(d_model, len(spec.labels), bias=spec.kind != CLASSIFICATION, seed=seed)
    if kind == "verbalizer":
        return Verbalizer(spec.label_words)
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


def last_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool, True at each row's last real token (left or right padding alike)."""
    if attention_mask is None:
        keep = torch.zeros_like(input_ids, dtype=torch.bool)
        keep[:, -1] = True
        return keep
    real = attention_mask.bool()
    return real & (attention_mask.cumsum(dim=1) == attention_mask.sum(dim=1, keepdim=True))


class NLUModel(nn.Module):
    """A method and a head on one task: (B, K) class logits, or (B, T, K) tag logits per real token."""

    def __init__(self, model: PromptModel, head: LinearHead | Verbalizer, task: str) -> None:
        super().__init__()
        spec = get_nlu_task(task)
        n_labels = head.score.out_features if isinstance(head, LinearHead) else len(head.word_ids)
        if n_labels != len(spec.labels):
            raise ValueError(f"the head gives {n_labels} labels but task {task!r} has {len(spec.labels)} "
                             f"{spec.labels}; build it with make_head(kind, {task!r}, d_model)")
        self.model, self.head, self.task, self.kind = model, head.to(model.base.wte.weight.device), task, spec.kind

    @property
    def base(self):
        return self.model.base

    @property
    def method_name(self) -> str:
        return self.model.method_name

    @property
    def head_kind(self) -> str:
        return "linear" if isinstance(self.head, LinearHead) else "verbalizer"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = last_token_mask(input_ids, attention_mask) if self.kind == CLASSIFICATION else None
        if self.head.reads == "hidden":
            # each method injects its own way (LoRA: lora.py): (B, C) or (B, T, C)
            features = self.model.hidden_states(input_ids, attention_mask, keep)
        else:
            features = self.model(input_ids, attention_mask, logits_to_keep=keep)  # (B, V) or (B, T, V)
        return self.head(features)  # (B, K) or (B, T, K)

    def read(self, hidden: torch.Tensor, lm_head) -> torch.Tensor:
        """The head on hidden states already computed (serving): the verbalizer goes through `lm_head`."""
        return self.head(hidden if self.head.reads == "hidden" else lm_head(hidden))

    # -- parameters: the method's own, then the head's -----------------------------------------
    def prompt_parameters(self) -> dict[str, nn.Parameter]:
        """What trains: the method's parameters (under their own names) and the head's (`head.*`)."""
        return {**self.model.prompt_parameters(), **{f"head.{n}": p for n, p in self.head.named_parameters()}}

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.model.prompt_state_dict(), **self.head_state_dict()}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors, `head.*`, for the prompt checkpoint (the verbalizer has none)."""
        return {f"head.{n}": p.detach() for n, p in self.head.named_parameters()}

    def head_config(self) -> dict:
        """What rebuilds the head (`head_from_config`): for the checkpoint's header, beside the method config."""
        return {"head": self.head_kind, "task": self.task}

    @torch.no_grad()
    def load_head_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved `head.*` tensors into the head, refusing missing, extra, misshapen or non-finite ones."""
        own = self.head_state_dict()
        saved = {n: t for n, t in tensors.items() if n.startswith("head.")}
        if set(saved) != set(own) or any(saved[n].shape != own[n].shape for n in own):
            shapes = {n: tuple(t.shape) for n, t in saved.items()}
            raise ValueError(f"the saved head tensors {shapes} do not fit a {self.head_kind} head for {self.task!r} "
                             f"({ {n: tuple(t.shape) for n, t in own.items()} }); save and load with the same head")
        for name, t in saved.items():
            if not torch.isfinite(t).all():
                raise ValueError(f"head tensor {name!r} holds NaN or inf values; the checkpoint is damaged")
        for name, p in self.head.named_parameters():
            p.copy_(saved[f"head.{name}"])


def head_from_config(model: PromptModel, config: dict, seed: int = 0) -> NLUModel:
    """An NLUModel on `model` with the head `config` describes (`NLUModel.head_config()`), untrained."""
    missing = {"head", "task"} - set(config)
    if missing:
        raise ValueError(f"the head config lacks {sorted(missing)}; it needs 'head' and 'task'")
    head = make_head(config["head"], config["task"], model.base.config.d_model, seed)
    return NLUModel(model, head, config["task"])
