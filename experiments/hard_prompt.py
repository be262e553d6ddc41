"""A discrete prompt search: the best k real tokens to put in front of the input, found greedily.

A soft prompt may be any vector; a hard prompt must be real tokens, so it is searched,
not trained. Coordinate search in the spirit of AutoPrompt (Shin et al. 2020) and GCG
(Zou et al. 2023), exhaustive because our vocabulary has only 40 tokens: start from k random
tokens; in each round visit every position in turn, try *every* vocabulary token there,
and keep the one that most lowers the answer loss of the frozen model on a training batch,

    loss(t_1..t_k) = CE(model([t_1..t_k; x]), answer)       averaged over answer tokens

A round costs k forward passes of V * B rows; the search stops after `rounds` rounds or
when a round changes nothing. The result is text, so it can be read, and reused without
any method code: `prompt + "abc="` is an ordinary input.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from minitransformer import CharTokenizer, MiniTransformer, sample_inputs
from minitransformer.data import IGNORE_INDEX, example_batch, format_prompt, get_task
from minitransformer.evaluate import predict


@torch.no_grad()
def prompt_losses(base: MiniTransformer, prompts: torch.Tensor, batch: tuple[torch.Tensor, ...],
                  max_rows: int = 8192) -> torch.Tensor:
    """Mean answer loss of each candidate prompt (N, k) on one batch of examples: (N,)."""
    input_ids, attention_mask, labels = batch  # (B, T) each, right-padded
    k, (B, T) = prompts.shape[1], input_ids.shape
    per_chunk, losses = max(1, max_rows // B), []
    for chunk in prompts.split(per_chunk):
        n = chunk.shape[0]
        ids = torch.cat([chunk[:, None].expand(n, B, k), input_ids[None].expand(n, B, T)], dim=2)  # (n, B, k + T)
        mask = torch.cat([attention_mask.new_ones(n, B, k), attention_mask[None].expand(n, B, T)], dim=2)
        logits = base(ids.reshape(n * B, k + T), attention_mask=mask.reshape(n * B, k + T))[:, k:]  # (nB, T, V)
        target = labels.repeat(n, 1)  # (nB, T), candidate-major like the rows
        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="none").view(n, B * T)
        losses.append(token_loss.sum(1) / (target != IGNORE_INDEX).view(n, B * T).sum(1))
    return torch.cat(losses)


def greedy_search(base: MiniTransformer, task: str, k: int, seed: int = 0, rounds: int = 4,
                  batch_size: int = 128) -> dict:
    """Greedy coordinate search for a k-token hard prompt for `task` (its name removed from the input)."""
    tokenizer, device = CharTokenizer(), next(base.parameters()).device
    train_inputs = sample_inputs(task, "train", 4000, seed)
    batch = example_batch(tokenizer, task, random.Random(seed).sample(train_inputs, batch_size), with_name=False)
    batch = tuple(t.to(device) for t in batch)
    vocab = torch.arange(1, tokenizer.vocab_size, device=device)  # every real token (0 is padding)
    generator = torch.Generator().manual_seed(seed)
    prompt = vocab[torch.randint(len(vocab), (k,), generator=generator).to(device)]  # (k,)
    loss = prompt_losses(base, prompt[None], batch)[0].item()
    history = [{"round": 0, "loss": round(loss, 4), "prompt": tokenizer.decode(prompt)}]
    for r in range(1, rounds + 1):
        changed = False
        for i in range(k):
            candidates = prompt.repeat(len(vocab), 1)  # (V - 1, k): position i takes every token in turn
            candidates[:, i] = vocab
            losses = prompt_losses(base, candidates, batch)
            best = int(losses.argmin())
            if losses[best].item() < loss - 1e-6:
                prompt, loss, changed = candidates[best].clone(), losses[best].item(), True
        history.append({"round": r, "loss": round(loss, 4), "prompt": tokenizer.decode(prompt)})
        if not changed:
            break
    return {"prompt": tokenizer.decode(prompt), "loss": round(loss, 4), "history": history,
            "forward_rows": sum(len(vocab) * k * batch_size for _ in history[1:])}


def hard_prompt_exact_match(base: MiniTransformer, prompt: str, task: str, inputs: list[str]) -> float:
    """Exact-match with `prompt` as plain text in front of each name-free input: `prompt + "abc="`."""
    targets = [get_task(task).solve(x) for x in inputs]
    texts = [prompt + format_prompt(task, x, with_name=False) for x in inputs]
    answers = predict(base, CharTokenizer(), texts, max(map(len, targets)))
    return sum(a == t for a, t in zip(answers, targets)) / len(inputs)
