"""``attn_implementation="sdpa_documents"`` for any transformers model that attends through its attention interface:
a padding-free packed row (one row of many documents, with ``cu_seq_lens_q``, as TRL's packed SFT batches come)
attends document by document, each a causal SDPA call of its own length, where ``sdpa`` runs the whole row under a
block-diagonal mask (the work of the row's length squared, not of the documents' lengths squared). Every other
call (padded batches, generation with a cache) is ``sdpa``'s, with ``sdpa``'s mask."""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "sdpa_documents"


def _packed_row(query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> bool:
    starts = kwargs.get("cu_seq_lens_q")
    return (starts is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
            and int(starts[-1]) == query.shape[2])


def document_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA over each document of a packed row (``query`` (1, heads, tokens, dim)); ``sdpa`` otherwise."""
    if not _packed_row(query, key, kwargs) or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = kwargs["cu_seq_lens_q"].tolist()
    grouped = query.shape[1] != key.shape[1]
    pieces = [F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                             dropout_p=dropout if module.training else 0.0, is_causal=True,
                                             scale=scaling, enable_gqa=grouped)
              for start, end in zip(bounds[:-1], bounds[1:]) if end > start]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, document_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
