"""A GPT of nanoGPT's architecture (GPT-2's): the second reference of the throughput benchmark.

Learned position embeddings, LayerNorm, a GELU MLP four times the width, a head tied to the token
embedding, one fused query/key/value projection and one causal SDPA call per layer. It takes a ChatForge
config's width, depth, heads, vocabulary and context; its own MLP and attention differ, so the benchmark
compares achieved model FLOP/s (:func:`flops_per_token`), not tokens/s.
"""

import torch.nn.functional as F
from torch import nn


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token, PaLM style: ``6 N`` over the matrix parameters (head included, position and
    token lookups excluded) plus ``12 L C T`` for attention over a ``seq_len`` window."""
    width, layers = cfg.hidden_size, cfg.num_hidden_layers
    matrices = layers * (4 * width * width + 8 * width * width) + width * cfg.vocab_size
    return 6.0 * matrices + 12.0 * layers * width * seq_len


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_out = nn.Linear(4 * width, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = (part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(self.ln_attn(x)).split(width, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc_out(F.gelu(self.fc(self.ln_mlp(x))))


class NanoGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        width = cfg.hidden_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, width)
        self.blocks = nn.ModuleList(Block(width, cfg.num_attention_heads) for _ in range(cfg.num_hidden_layers))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, cfg.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx, targets):
        positions = self.position_embedding.weight[:idx.shape[1]]
        x = self.token_embedding(idx) + positions
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_final(x))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten())
