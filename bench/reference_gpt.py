"""A plain-PyTorch GPT with ChatForge's architecture: the reference the throughput benchmark compares to.

Same shapes and maths as ChatForgeForCausalLM (RoPE, RMSNorm, grouped-query attention, SwiGLU or
ReLU² MLP, tied head, no biases), written the nanoGPT way: no framework, one causal SDPA call.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.n_head, self.n_kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = d // self.n_head
        self.attn_norm = nn.RMSNorm(d, eps=cfg.rms_norm_eps)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.rms_norm_eps)
        self.qkv = nn.Linear(d, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.gated = cfg.gated_mlp
        self.fc = nn.Linear(d, (2 if self.gated else 1) * cfg.intermediate_size, bias=False)
        self.fc_out = nn.Linear(cfg.intermediate_size, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(
            [self.n_head * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = rope(q.view(B, T, self.n_head, self.head_dim).transpose(1, 2), cos, sin)
        k = rope(k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, -1))
        h = self.fc(self.mlp_norm(x))
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.relu(h).square()
        return x + self.fc_out(h)


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class ReferenceGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.outer(torch.arange(cfg.max_position_embeddings).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=cfg.initializer_range)

    def forward(self, idx, targets):
        T = idx.shape[1]
        cos, sin = self.cos[:T].to(self.embed.weight.dtype), self.sin[:T].to(self.embed.weight.dtype)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten())
