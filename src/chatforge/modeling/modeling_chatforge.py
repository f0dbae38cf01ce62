"""ChatForge: a modern decoder-only Transformer in transformers' style.

Token embedding -> N x [RMSNorm -> grouped-query attention with RoPE (optional QK-norm) -> residual,
RMSNorm -> gated or plain MLP -> residual] -> RMSNorm -> output head. No biases anywhere.

This file is copied next to saved checkpoints (``auto_map``), so it imports nothing but torch,
transformers and its own configuration.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForSequenceClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_chatforge import ChatForgeConfig

#: Written into every saved config so that each Auto class finds its ChatForge class with trust_remote_code.
AUTO_MAP = {
    "AutoConfig": "configuration_chatforge.ChatForgeConfig",
    "AutoModel": "modeling_chatforge.ChatForgeModel",
    "AutoModelForCausalLM": "modeling_chatforge.ChatForgeForCausalLM",
    "AutoModelForSequenceClassification": "modeling_chatforge.ChatForgeForSequenceClassification",
}


#: Attention implementations that apply causal masking themselves when given no mask.
IS_CAUSAL_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")


def _cpu_training(states: torch.Tensor) -> bool:
    """Whether ``states`` are computed for a gradient on a CPU, uncompiled: where the hand-written backward passes
    below beat autograd's chains of elementwise kernels (compiled, inductor fuses those itself)."""
    return states.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()


class _RMSNormByLayerNormBackward(torch.autograd.Function):
    """RMSNorm whose backward pass is LayerNorm's fused kernel with the mean taken as zero, plus the one term in
    which the two differ (LayerNorm also subtracts the mean of ``grad * weight``). On a CPU, RMSNorm's own backward
    runs as a chain of elementwise operations: this is about twice as fast in float32, same values up to summation
    order. (LayerNorm's bfloat16 backward sums the weight's gradient too coarsely: float32 inputs only.)"""

    @staticmethod
    def forward(ctx, hidden, weight, eps: float):
        width = hidden.shape[-1]
        mean_square = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True).square_() / width
        ctx.save_for_backward(hidden, torch.rsqrt(mean_square + eps), weight)
        return F.rms_norm(hidden, (width,), weight, eps)

    @staticmethod
    def backward(ctx, grad):
        hidden, rstd, weight = ctx.saved_tensors
        width = hidden.shape[-1]
        grad_hidden, grad_weight, _ = torch.ops.aten.native_layer_norm_backward(
            grad, hidden, [width], torch.zeros_like(rstd), rstd, weight, None, [True, True, False])
        mean_grad = (grad @ weight).unsqueeze(-1) / width
        return grad_hidden.addcmul_(rstd, mean_grad), grad_weight, None


class ChatForgeRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(hidden_states.dtype)
        if hidden_states.dtype == torch.float32 and _cpu_training(hidden_states):
            return _RMSNormByLayerNormBackward.apply(hidden_states, weight, self.eps)
        return F.rms_norm(hidden_states, self.weight.shape, weight, self.eps)


class ChatForgeRotaryEmbedding(nn.Module):
    """Rotary position embeddings: cos/sin tables for the given positions."""

    def __init__(self, config: ChatForgeConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: ChatForgeConfig) -> torch.Tensor:
        dim = config.head_dim
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """Rotate queries and keys of shape (batch, heads, seq, head_dim) by position, in their own dtype
    (under autocast they stay in bf16 for the attention kernel)."""
    cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def _rotate_into(out: torch.Tensor, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> None:
    """``out = states * cos + sign * rotate_half(states) * sin`` written into ``out`` (the halves of ``cos`` and
    ``sin`` being equal, ``cos``/``sin`` here are one half); ``sign=-1`` is the rotation's transpose."""
    first, second = states.chunk(2, dim=-1)
    out_first, out_second = out.chunk(2, dim=-1)
    torch.mul(first, cos, out=out_first).addcmul_(second, sin, value=-sign)
    torch.mul(second, cos, out=out_second).addcmul_(first, sin, value=sign)


class _RotaryQKV(torch.autograd.Function):
    """Queries, keys and values from the fused projection's output ``(batch, seq, (heads + 2 * kv_heads) *
    head_dim)``, queries and keys rotated by RoPE, each returned ``(batch, heads, seq, head_dim)``. The rotation is
    two passes over the data each way, written straight into its output, and the backward pass writes the three
    gradients into one buffer: on a CPU, where each elementwise operation is a pass over memory, this takes about
    half the time of rotating by ``apply_rotary_pos_emb`` after a split (whose gradient is then concatenated)."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, heads: int, kv_heads: int):
        batch, length, _ = qkv.shape
        rotated_heads = heads + kv_heads
        head_dim = cos.shape[-1]
        query_key = qkv.unflatten(-1, (rotated_heads + kv_heads, head_dim))
        cos, sin = (table.to(qkv.dtype)[:, :, None, :head_dim // 2] for table in (cos, sin))
        rotated = qkv.new_empty(batch, length, rotated_heads, head_dim)
        _rotate_into(rotated, query_key[:, :, :rotated_heads], cos, sin, 1.0)
        ctx.save_for_backward(cos, sin)
        ctx.heads, ctx.kv_heads = heads, kv_heads
        query, key = rotated.split((heads, kv_heads), dim=2)
        return query.transpose(1, 2), key.transpose(1, 2), query_key[:, :, rotated_heads:].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_query, grad_key, grad_value):
        cos, sin = ctx.saved_tensors
        batch, _, length, head_dim = grad_query.shape
        grad = grad_query.new_empty(batch, length, ctx.heads + 2 * ctx.kv_heads, head_dim)
        grad_query_key, grad_value_out = grad.split((ctx.heads + ctx.kv_heads, ctx.kv_heads), dim=2)
        _rotate_into(grad_query_key[:, :, :ctx.heads], grad_query.transpose(1, 2), cos, sin, -1.0)
        _rotate_into(grad_query_key[:, :, ctx.heads:], grad_key.transpose(1, 2), cos, sin, -1.0)
        grad_value_out.copy_(grad_value.transpose(1, 2))
        return grad.flatten(2), None, None, None, None


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention in plain PyTorch (used when ``attn_implementation="eager"``)."""
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def document_spans(position_ids: torch.Tensor) -> list[list[int]] | None:
    """Where each packed document of each row starts and ends (``[0, ..., length]`` per row), from positions that
    restart at each document (a position that does not follow the one before it starts a document); None when
    every row holds one document. Reads the positions on the host."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not starts[:, 1:].any():
        return None
    length = position_ids.shape[1]
    return [[*row.nonzero().flatten().tolist(), length] for row in starts]


def attention_by_document(query, key, value, spans: list[list[int]], scaling: float, dropout: float = 0.0):
    """SDPA with its causal kernel on the packed documents laid out as a batch of their own (queries ``(batch, heads,
    seq, head_dim)``, keys and values with their own head count), instead of one call over each whole row under a
    materialized block-diagonal mask, which computes every query-key product of the row. A document shorter than
    the longest is padded at its end: causal attention keeps its real positions from seeing the padding. One call
    for all documents (not one each: many small calls crawl where processes share the cores). Returns ``(batch,
    seq, heads, head_dim)``, as the attention interface does."""
    batch, heads, length, head_dim = query.shape
    documents = [(row * length + start, end - start) for row, bounds in enumerate(spans)
                 for start, end in zip(bounds, bounds[1:])]
    longest = max(size for _, size in documents)
    offsets = torch.arange(longest)
    gather = torch.cat([first + offsets.clamp(max=size - 1) for first, size in documents]).to(query.device)
    scatter = torch.cat([index * longest + torch.arange(size) for index, (_, size) in enumerate(documents)])

    def by_document(states: torch.Tensor) -> torch.Tensor:
        flat = states.transpose(1, 2).reshape(batch * length, states.shape[1], head_dim)
        return flat.index_select(0, gather).view(len(documents), longest, -1, head_dim).transpose(1, 2)

    output = F.scaled_dot_product_attention(by_document(query), by_document(key), by_document(value),
                                            dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=True)
    output = output.transpose(1, 2).reshape(len(documents) * longest, heads, head_dim)
    return output.index_select(0, scatter.to(query.device)).view(batch, length, heads, head_dim)


def worth_attending_by_document(spans: list[list[int]]) -> bool:
    """Whether the documents' own query-key products come to at most half of the rows' (many short documents, as
    in padding-free SFT rows): one call per document then beats one call over all rows under the mask. Rows of
    one or two long documents (pretraining's) keep the single call."""
    length = spans[0][-1]
    kept = sum((end - start) ** 2 for bounds in spans for start, end in zip(bounds, bounds[1:]))
    return kept <= 0.5 * len(spans) * length ** 2


class ChatForgeAttention(nn.Module):
    """Grouped-query self-attention with RoPE, optional QK-norm, through transformers' attention interface.

    Queries, keys and values come from one fused projection (``qkv_proj``, in that order).
    """

    def __init__(self, config: ChatForgeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        q_out = config.num_attention_heads * self.head_dim
        kv_out = config.num_key_value_heads * self.head_dim
        self.qkv_split = (q_out, kv_out, kv_out)
        # One fused projection for queries, keys and values: one large matmul instead of three.
        self.qkv_proj = nn.Linear(config.hidden_size, q_out + 2 * kv_out, bias=False)
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=False)
        self.o_proj.writes_residual = True
        if config.qk_norm:
            self.q_norm = ChatForgeRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = ChatForgeRMSNorm(self.head_dim, config.rms_norm_eps)

    def project(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]):
        """Queries and keys (normed where QK-norm is on, rotated) and values, each ``(batch, heads, seq,
        head_dim)``."""
        qkv = self.qkv_proj(hidden_states)
        if not self.config.qk_norm and _cpu_training(qkv):
            heads, kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
            return _RotaryQKV.apply(qkv, *position_embeddings, heads, kv_heads)
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query, key, value = qkv.split(self.qkv_split, dim=-1)
        query, key = query.view(hidden_shape), key.view(hidden_shape)
        if self.config.qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = apply_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), *position_embeddings)
        return query, key, value.view(hidden_shape).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        document_spans: list[list[int]] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``document_spans`` (from :func:`document_spans`): attend within each packed document, by
        :func:`attention_by_document`, instead of through the attention interface."""
        input_shape = hidden_states.shape[:-1]
        query, key, value = self.project(hidden_states, position_embeddings)

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)  # a paged cache fills kwargs

        dropout = self.config.attention_dropout if self.training else 0.0
        if document_spans is not None:
            attn_output = attention_by_document(query, key, value, document_spans, self.scaling, dropout)
            return self.o_proj(attn_output.reshape(*input_shape, -1)), None
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights


class _SwiGLU(torch.autograd.Function):
    """``silu(gate) * up`` from the fused projection's output (gate first), with the backward pass writing both
    halves' gradients into one buffer instead of concatenating them (a pass over the widest activation less)."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad):
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


class ChatForgeMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` when gated (SwiGLU, gate and up fused in ``gate_up_proj``),
    else ``down(act(up(x)))`` (e.g. ReLU²)."""

    def __init__(self, config: ChatForgeConfig):
        super().__init__()
        self.gated = config.gated_mlp
        if self.gated:  # gate and up projections fused into one matmul, gate first
            self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        else:
            self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.writes_residual = True
        self.act_fn = ACT2FN[config.hidden_act]
        self.silu = config.hidden_act == "silu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate_up = self.gate_up_proj(x)
            if self.silu and _cpu_training(gate_up):
                return self.down_proj(_SwiGLU.apply(gate_up))
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(self.act_fn(gate) * up)
        return self.down_proj(self.act_fn(self.up_proj(x)))


class ChatForgeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: ChatForgeConfig, layer_idx: int):
        super().__init__()
        self.self_attn = ChatForgeAttention(config, layer_idx)
        self.mlp = ChatForgeMLP(config)
        self.input_layernorm = ChatForgeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = ChatForgeRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class ChatForgePreTrainedModel(PreTrainedModel):
    config_class = ChatForgeConfig
    config: ChatForgeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatForgeDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": ChatForgeDecoderLayer, "attentions": ChatForgeAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "writes_residual", False):
                # GPT-2 style: scale residual-stream writes so the stream's variance does not grow with depth.
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, ChatForgeRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ChatForgeRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; the config names every ChatForge Auto class so the folder loads without chatforge."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)


class ChatForgeModel(ChatForgePreTrainedModel):
    """The bare decoder: returns the final hidden states (and the KV cache)."""

    def __init__(self, config: ChatForgeConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [ChatForgeDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = ChatForgeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = ChatForgeRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """Packed rows: pass ``position_ids`` that restart at 0 for each document and no ``attention_mask``;
        the causal mask then also stops attention across documents. On a CPU, without a cache or compilation, SDPA
        then runs on each document alone (:func:`attention_by_document`) rather than under a block-diagonal mask."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # A cache made here starts empty: the mask is then built as without one, which keeps the
        # packed-sequence detection from position_ids (the mask builder skips it when given a cache).
        new_cache = bool(use_cache) and cache is None and not self.training
        if new_cache:
            cache = DynamicCache(config=self.config)
        plain_causal = attention_mask is None and position_ids is None and (cache is None or new_cache)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        spans = None  # packed documents, attended one by one: SDPA on a CPU, without a cache, not compiling
        if (attention_mask is None and not plain_causal and cache is None and inputs_embeds.device.type == "cpu"
                and self.config._attn_implementation == "sdpa" and not torch.compiler.is_compiling()):
            spans = document_spans(position_ids.expand(inputs_embeds.shape[0], -1))
            plain_causal = spans is None  # one document a row
            if spans is not None and not worth_attending_by_document(spans):
                spans = None
        if spans is not None or (plain_causal and self.config._attn_implementation in IS_CAUSAL_ATTENTION):
            # No padding, no packing, no past (or packed documents attended one by one): the kernel's own causal
            # mode. (Under torch.compile the mask builder cannot always tell, and would hand SDPA an explicit mask.)
            causal_mask = None
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=None if new_cache else cache,
                position_ids=position_ids,
            )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                cache=cache,
                position_ids=position_ids,  # kernels without a mask (flash attention) find documents from them
                document_spans=spans,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


#: Target ids that count for nothing in a loss.
IGNORE_INDEX = -100


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int, dtype: torch.dtype, need_grads: bool):
        with torch.autocast(hidden.device.type, enabled=False):
            matrix = weight.to(dtype)
            matrix_t = matrix.T.contiguous()  # the forward product runs faster on a contiguous right-hand side
            softmax_dtype = torch.promote_types(dtype, torch.float32)
            total = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_grads else None
            grad_weight = torch.zeros(weight.shape, dtype=softmax_dtype, device=weight.device) if need_grads else None
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = hidden[start:start + chunk_rows].to(dtype)
                wanted = targets[start:start + chunk_rows]
                counted = wanted != IGNORE_INDEX
                index = torch.where(counted, wanted, 0)
                log_probs = torch.log_softmax((rows @ matrix_t).to(softmax_dtype), dim=-1)
                total -= (log_probs.gather(1, index[:, None])[:, 0] * counted).sum()
                if need_grads:  # d loss / d logits = softmax - one-hot, on counted rows
                    grad_logits = log_probs.exp_()
                    grad_logits[torch.arange(len(index), device=index.device), index] -= 1.0
                    grad_logits = grad_logits.mul_(counted[:, None]).to(dtype)
                    if grad_hidden.dtype == grad_weight.dtype == dtype:  # in place: no temporary per chunk
                        torch.mm(grad_logits, matrix, out=grad_hidden[start:start + chunk_rows])
                        grad_weight.addmm_(grad_logits.T, rows)
                    else:
                        grad_hidden[start:start + chunk_rows] = grad_logits @ matrix
                        grad_weight += grad_logits.T @ rows
        if need_grads:
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, (grad_weight * grad_output).to(ctx.weight_dtype), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int = 256) -> torch.Tensor:
    """Sum over rows of the cross-entropy of ``hidden @ weight.T`` (rows of hidden states, a ``(vocabulary,
    width)`` head) against ``targets`` (class ids; ``-100`` rows count for nothing), without ever holding the
    logits of more than ``chunk_rows`` rows.

    The plain way keeps the whole ``(rows, vocabulary)`` logits in the compute dtype, a float32 copy and float32
    log-probabilities for the backward pass. Here each chunk's logits are made, turned into its loss and into
    the gradients of its hidden states and of the head, and dropped: the gradients are ready when the forward
    pass ends, and one chunk's logits at a time stay in the CPU's cache. The products run in the autocast dtype
    where autocast is on, the softmax and the head's gradient sum in float32 (or wider)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.shape[1:] != hidden.shape[1:]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and "
                         f"targets {tuple(targets.shape)} do not fit: expected (rows, width), (vocabulary, width) "
                         "and (rows,)")
    need_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, _compute_dtype(hidden), need_grads)


class ChatForgeForCausalLM(ChatForgePreTrainedModel, GenerationMixin):
    """The decoder with a language-modelling head: next-token logits and loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ChatForgeConfig):
        super().__init__(config)
        self.model = ChatForgeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        skip_logits: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """``labels`` are the input ids with ignored positions set to -100; the shift happens inside (or give
        ``shift_labels``, already shifted). With ``skip_logits`` the loss (mean over the counted tokens, or sum
        over ``num_items_in_batch``) comes from :func:`linear_cross_entropy` and no logits are returned."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = loss = None
        if skip_logits:
            targets = kwargs.get("shift_labels")
            if targets is None:
                if labels is None:
                    raise ValueError("skip_logits=True computes the loss only: give labels or shift_labels")
                targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            targets = targets.flatten()
            total = linear_cross_entropy(hidden_states.flatten(0, 1), self.lm_head.weight, targets)
            loss = total / (kwargs.get("num_items_in_batch") or (targets != IGNORE_INDEX).sum().clamp(min=1))
        else:
            logits = self.lm_head(hidden_states[:, keep, :])
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class ChatForgeForSequenceClassification(GenericForSequenceClassification, ChatForgePreTrainedModel):
    """The decoder with a linear score head read at the last non-padding token (reward models); a packed row
    (one row, ``position_ids`` restarting per sequence, no ``attention_mask``) gets one score per sequence."""

    #: packed rows are scored sequence by sequence (what chatforge's reward trainer checks before packing)
    scores_packed_sequences = True

    def __init__(self, config: ChatForgeConfig):
        ChatForgePreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = ChatForgeModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        """A packed row's ``logits`` are ``(sequences, num_labels)``, each read at its sequence's last token;
        anything else is scored as transformers' sequence classifiers score it."""
        packed = (attention_mask is None and position_ids is not None and position_ids.shape[0] == 1
                  and kwargs.get("labels") is None)
        spans = document_spans(position_ids) if packed else None
        if spans is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   **kwargs)
        hidden = self.model(input_ids=input_ids, position_ids=position_ids, **kwargs).last_hidden_state
        ends = torch.tensor(spans[0][1:], device=hidden.device) - 1
        return SequenceClassifierOutputWithPast(logits=self.score(hidden[0, ends]))


__all__ = [
    "AUTO_MAP",
    "ChatForgeForCausalLM",
    "ChatForgeForSequenceClassification",
    "ChatForgeModel",
    "ChatForgePreTrainedModel",
]
