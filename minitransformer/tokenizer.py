"""A character-level tokenizer for the toy corpus.

Every character is one token, so a reader can line up tokens and text by eye:
`rev:abc=cba.` is 12 tokens. The vocabulary is fixed (not learned from data), which
keeps token ids identical across machines and checkpoints.

Two tokens are special:
- `<pad>` (id 0) fills short rows of a batch; the attention mask hides it and the loss
  ignores it.
- `.` is the end-of-sequence token: it closes every example (`rev:abc=cba.`), so
  generation stops when the model writes it.
"""

from __future__ import annotations

import string

import torch

PAD = "<pad>"
EOS = "."
# The visible alphabet: lowercase letters for string tasks, digits for arithmetic,
# and the punctuation that frames an example: task name `:` input `=` answer `.`.
CHARACTERS = string.ascii_lowercase + string.digits + ":=.+"


class CharTokenizer:
    """Maps text to token ids and back, one character per token.

    >>> tok = CharTokenizer()
    >>> tok.decode(tok.encode("rev:abc=cba."))
    'rev:abc=cba.'
    """

    def __init__(self, characters: str = CHARACTERS) -> None:
        if len(set(characters)) != len(characters):
            raise ValueError("the tokenizer's characters must be distinct")
        self.vocab = [PAD, *characters]
        self.stoi = {s: i for i, s in enumerate(self.vocab)}
        self.pad_id = self.stoi[PAD]
        self.eos_id = self.stoi[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary {''.join(self.vocab[1:])!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        """Turn ids back into text, dropping padding."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.vocab[i] for i in ids if i != self.pad_id)

    def batch_encode(self, texts: list[str], pad_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several texts into one padded batch.

        Returns `input_ids` (B, T) and `attention_mask` (B, T), 1 on real tokens and 0 on
        padding. Left padding (the default) puts every row's last token in the last
        column, which is what generation needs: new tokens are appended on the right.
        """
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
        if not texts:
            raise ValueError("batch_encode needs at least one text")
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if pad_side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask
