"""The real tokens of a padded batch as one `(tokens, width)` matrix.

A batch padded to its longest sequence spends the padding's share of every
token-wise step (the projections, the feed-forward, LayerNorm, the dropout
and residual sums) on positions nothing reads: in a BERT layer only
attention mixes positions, and it never reads the padding (its keys are
masked). Packed, those steps run on the real tokens alone; attention still
runs in the padded layout, its inputs scattered into it and its output
gathered back. Random batches of CoNLL-2003 sentences (32 at a time, as the
NER job trains) are 39% real tokens.

PyTorch only, outside `torch.compile`: the number of real tokens changes
from batch to batch, which eager PyTorch runs as it comes and XLA would
compile anew for each count (`PackedTokens.of` answers None elsewhere, and
the layers then run padded).
"""

import keras


# === Packing ===
class PackedTokens:
    """Where the real tokens of a `(batch, seq)` padding mask sit in its
    `batch * seq` flattening, and the moves between the two layouts.

    Build with `PackedTokens.of(padding_mask, x)`, which returns None where
    packing does not apply (another backend, symbolic tensors) or skips
    nothing (no padding).
    """

    def __init__(self, rows, batch, seq):
        self.rows = rows  # (tokens,) int64, ascending
        self.batch = batch
        self.seq = seq

    @classmethod
    def of(cls, padding_mask, x):
        """Packing for `padding_mask` (nonzero at real tokens) and hidden
        states `x` `(batch, seq, hidden)`, or None: not PyTorch, symbolic or
        meta tensors, inside `torch.compile`, or no padding to skip."""
        if keras.backend.backend() != "torch" or padding_mask is None:
            return None
        import torch

        if (not isinstance(x, torch.Tensor) or x.device.type == "meta"
                or torch.compiler.is_compiling()):
            return None
        mask = torch.as_tensor(padding_mask, device=x.device)
        batch, seq = mask.shape
        rows = mask.reshape(-1).nonzero().squeeze(1)  # (tokens,)
        if rows.numel() == batch * seq:
            return None
        return cls(rows, batch, seq)

    def pack(self, x):
        """`(batch, seq, ...)` -> `(tokens, ...)`: the real tokens' rows."""
        return x.reshape(self.batch * self.seq, *x.shape[2:]).index_select(0, self.rows)

    def unpack(self, x):
        """`(tokens, ...)` -> `(batch, seq, ...)`, zeros at the padding."""
        padded = x.new_zeros((self.batch * self.seq, *x.shape[1:]))
        return padded.index_copy(0, self.rows, x).view(self.batch, self.seq, *x.shape[1:])
