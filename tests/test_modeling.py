import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import small_config
from transformers import (
    AttentionInterface,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    pipeline,
)

from chatforge.data import DataCollatorForPackedPretraining
from chatforge.modeling import (
    ChatForgeForCausalLM,
    ChatForgeForSequenceClassification,
    ChatForgeModel,
)

PROMPTS = ["The city of", "In 1990, the first president of the republic was"]


def _left_padded(tokenizer, prompts):
    tokenizer.padding_side = "left"
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"


def _until_stop(ids: torch.Tensor, stop_ids) -> list[int]:
    out = []
    for token in ids.tolist():
        out.append(token)
        if token in stop_ids:
            break
    return out


def test_greedy_generation_with_cache_equals_without_cache_batched_left_padded(model, tokenizer):
    batch = _left_padded(tokenizer, PROMPTS)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain left padding"
    with_cache = model.generate(**batch, max_new_tokens=24, do_sample=False, use_cache=True)
    without_cache = model.generate(**batch, max_new_tokens=24, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(model, tokenizer):
    batch = _left_padded(tokenizer, PROMPTS)
    batched = model.generate(**batch, max_new_tokens=24, do_sample=False)
    stop_ids = set(model.generation_config.eos_token_id)
    for row, prompt in enumerate(PROMPTS):
        alone = tokenizer(prompt, return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=24, do_sample=False)
        expected = _until_stop(single[0, alone["input_ids"].shape[1]:], stop_ids)
        got = _until_stop(batched[row, batch["input_ids"].shape[1]:], stop_ids)
        assert got == expected
        assert len(got) > 5


def test_packed_documents_do_not_attend_across_boundaries(model, tokenizer, documents):
    docs = [tokenizer.encode(text, add_special_tokens=False)[:40] for text in documents[:3]]
    collator = DataCollatorForPackedPretraining(tokenizer.eos_token_id, tokenizer.pad_token_id, seq_len=128)
    packed = collator([{"input_ids": ids} for ids in docs])
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        start = 0
        for ids in docs:
            document = torch.tensor([ids + [tokenizer.eos_token_id]])
            alone = model(input_ids=document).logits[0]
            torch.testing.assert_close(packed_logits[start:start + document.shape[1]], alone, atol=1e-5, rtol=1e-4)
            start += document.shape[1]


def test_packed_rows_attended_document_by_document_train_as_under_the_block_mask(tokenizer):
    """On a CPU, SDPA runs on each packed document alone where the documents are short; eager attention applies the
    block-diagonal mask the mask builder makes from the same positions. Loss and every gradient agree (rows with
    different documents, one document a token long)."""
    from chatforge.modeling.modeling_chatforge import document_spans, worth_attending_by_document

    torch.manual_seed(0)
    positions = torch.stack([torch.cat([torch.arange(n) for n in (9, 1, 6, 8, 8)]),
                             torch.cat([torch.arange(n) for n in (10, 12, 10)])])
    assert document_spans(positions) == [[0, 9, 10, 16, 24, 32], [0, 10, 22, 32]]
    assert worth_attending_by_document(document_spans(positions))
    assert not worth_attending_by_document([[0, 20, 32], [0, 32]])  # long documents: one masked call
    assert document_spans(torch.arange(5, 37).repeat(2, 1)) is None
    ids = torch.randint(0, len(tokenizer), (2, 32))
    results = []
    for attention in ("sdpa", "eager"):
        torch.manual_seed(1)
        model = ChatForgeForCausalLM(small_config(tokenizer)).train()
        model.set_attn_implementation(attention)
        loss = model(ids, position_ids=positions, labels=ids).loss
        loss.backward()
        results.append((model, loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (model, by_document, grads), (_, masked, expected) = results
    torch.testing.assert_close(by_document, masked, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)
    model.set_attn_implementation("sdpa")
    assert not torch.allclose(model(ids, labels=ids).loss, by_document)  # as one document each row, it differs
    shared = positions[:1]  # one row of positions for the whole batch
    torch.testing.assert_close(model(ids, position_ids=shared, labels=ids).loss,
                               model(ids, position_ids=shared.expand(2, -1), labels=ids).loss)


def _attention_by_document(module, query, key, value, attention_mask, scaling, dropout=0.0, position_ids=None,
                           **kwargs):
    """Attention that, like varlen flash attention, gets no mask and finds each packed document from the positions
    restarting at 0."""
    documents = (position_ids == 0).cumsum(-1)
    causal = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
    mask = (documents[:, :, None] == documents[:, None, :]) & causal
    groups = module.num_key_value_groups
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=mask[:, None],
        scale=scaling)
    return output.transpose(1, 2).contiguous(), None


def test_an_attention_kernel_without_a_mask_gets_the_positions_it_needs_to_keep_documents_apart(
        model, tokenizer, documents):
    """A registered kernel with no mask builder gets ``attention_mask=None`` (as flash attention does): packed
    rows stay apart only if ``position_ids`` reach it."""
    AttentionInterface.register("by_document", _attention_by_document)
    docs = [tokenizer.encode(text, add_special_tokens=False)[:40] for text in documents[:3]]
    packed = DataCollatorForPackedPretraining(tokenizer.eos_token_id, tokenizer.pad_token_id, seq_len=128)(
        [{"input_ids": ids} for ids in docs])
    with torch.no_grad():
        expected = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
        model.set_attn_implementation("by_document")
        got = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_gives_identical_logits(model, saved_model_dir, tokenizer):
    files = set(os.listdir(saved_model_dir))
    assert {"model.safetensors", "config.json", "modeling_chatforge.py", "configuration_chatforge.py",
            "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= files
    loaded = AutoModelForCausalLM.from_pretrained(saved_model_dir).eval()
    assert isinstance(loaded, ChatForgeForCausalLM)
    ids = tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_auto_classes_resolve_to_chatforge(saved_model_dir):
    assert isinstance(AutoModel.from_pretrained(saved_model_dir), ChatForgeModel)
    classifier = AutoModelForSequenceClassification.from_pretrained(saved_model_dir, num_labels=1)
    assert isinstance(classifier, ChatForgeForSequenceClassification)
    assert type(AutoTokenizer.from_pretrained(saved_model_dir)).__name__ == "ChatForgeTokenizer"


REMOTE_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["chatforge"] = None  # make chatforge unimportable, as on a machine without it
    try:
        import chatforge
    except ImportError:
        pass
    else:
        raise SystemExit("chatforge is still importable")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    path = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    ids = tokenizer("The city of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.save(model(ids).logits, sys.argv[2])
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = generator([{"role": "user", "content": "Hi"}], max_new_tokens=5, do_sample=False)
    print(type(model).__module__, out[0]["generated_text"][-1]["role"])
    """
)


def test_trust_remote_code_loads_without_chatforge_installed(model, saved_model_dir, tokenizer, tmp_path):
    logits_path = tmp_path / "logits.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD_SCRIPT, str(saved_model_dir), str(logits_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module, role = result.stdout.split()[-2:]
    assert module.startswith("transformers_modules.") and role == "assistant"
    ids = tokenizer("The city of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(torch.load(logits_path), model(ids).logits)


@pytest.mark.parametrize("setting, kernelized", [(None, "False"), ("YES", "True")])
def test_models_load_without_hub_kernels_unless_the_user_turns_them_on(saved_model_dir, setting, kernelized):
    # Kernelized models fetch layers from the Hub when moved to a GPU and switched to eval(), which fails offline.
    env = {key: value for key, value in os.environ.items() if key != "USE_HUB_KERNELS"}
    if setting:
        env["USE_HUB_KERNELS"] = setting
    script = ("import sys, chatforge, transformers\n"
              "print(transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).use_kernels)")
    result = subprocess.run([sys.executable, "-c", script, str(saved_model_dir)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == kernelized


def test_pipeline_text_generation_on_text_and_chat_messages(model, tokenizer):
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("The city of", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The city of") and len(text) > len("The city of")
    chat = generator([{"role": "user", "content": "Hello there"}], max_new_tokens=8, do_sample=False)
    reply = chat[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)


def test_output_hidden_states_has_one_entry_per_layer_plus_embeddings(model, tokenizer):
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (1, ids.shape[1], model.config.hidden_size)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer)).train()
    ids = torch.randint(0, len(tokenizer), (2, 32))

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing_enable()
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", [dict(qk_norm=True), dict(gated_mlp=False, hidden_act="relu2"),
                                     dict(tie_word_embeddings=False)])
def test_architecture_variants_train_and_round_trip(tokenizer, tmp_path, variant):
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, **variant))
    ids = torch.randint(0, len(tokenizer), (2, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):  # memorise one batch
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    model.save_pretrained(tmp_path)
    loaded = ChatForgeForCausalLM.from_pretrained(tmp_path)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    tied = loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert tied == loaded.config.tie_word_embeddings


def test_sequence_classification_scores_last_real_token(tokenizer):
    torch.manual_seed(0)
    config = small_config(tokenizer, num_labels=1)
    classifier = ChatForgeForSequenceClassification(config).eval()
    short = tokenizer("A short answer", return_tensors="pt")["input_ids"]
    batch = tokenizer(["A short answer", "A much longer answer with many more words"], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        alone = classifier(short).logits
        batched = classifier(**batch).logits
    assert batched.shape == (2, 1)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)


def test_eager_and_sdpa_attention_agree(tokenizer, saved_model_dir):
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    eager = AutoModelForCausalLM.from_pretrained(saved_model_dir, attn_implementation="eager").eval()
    sdpa = AutoModelForCausalLM.from_pretrained(saved_model_dir, attn_implementation="sdpa").eval()
    real = ids["attention_mask"].bool()  # padding rows attend to nothing: their outputs are arbitrary
    with torch.no_grad():
        torch.testing.assert_close(eager(**ids).logits[real], sdpa(**ids).logits[real], atol=1e-4, rtol=1e-4)


def test_torch_compile_matches_eager(tokenizer):
    """Loss and gradients of the compiled model, on packed rows (two documents each, as pretraining feeds it)."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer)).train()
    ids = torch.randint(0, len(tokenizer), (2, 32))
    packed = torch.cat([torch.arange(12), torch.arange(20)]).repeat(2, 1)
    eager_loss = model(ids, position_ids=packed, labels=ids).loss
    eager_loss.backward()
    eager_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    compiled_loss = torch.compile(model, fullgraph=True)(ids, position_ids=packed, labels=ids).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, eager_grad, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(model(ids, labels=ids).loss, eager_loss)  # the documents were kept apart


def test_compiled_plain_causal_forward_lets_sdpa_use_its_causal_kernel(tokenizer, monkeypatch):
    """No padding, packing or cache: SDPA gets no explicit mask (is_causal), eager and compiled alike."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import chatforge.modeling.modeling_chatforge as modeling

    masks = []

    def observed_sdpa(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(modeling.ALL_ATTENTION_FUNCTIONS, "get_interface", lambda impl, default: observed_sdpa)
    model = ChatForgeForCausalLM(small_config(tokenizer, num_hidden_layers=1))
    ids = torch.randint(0, len(tokenizer), (2, 16))
    eager = model(ids, labels=ids).loss
    compiled = torch.compile(model)(ids, labels=ids).loss
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert masks == [None, None]
    padded = model(ids, attention_mask=torch.ones_like(ids).index_fill_(1, torch.tensor([0]), 0))
    assert masks[-1] is not None and padded.logits.shape == (2, 16, len(tokenizer))


@pytest.mark.parametrize("tied", [True, False])
def test_the_loss_without_logits_equals_the_plain_heads_loss_and_gradients(tokenizer, tied):
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, tie_word_embeddings=tied)).train()
    ids = torch.randint(0, len(tokenizer), (3, 40))
    labels = ids.clone()
    labels[0, :10] = -100  # a prompt the loss skips

    def loss_and_grads(**kwargs):
        model.zero_grad()
        output = model(ids, **kwargs)
        output.loss.backward()
        return output, [p.grad.clone() for p in model.parameters()]

    plain, plain_grads = loss_and_grads(labels=labels)
    fused, fused_grads = loss_and_grads(labels=labels, skip_logits=True)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    total = (shifted != -100).sum()
    summed, _ = loss_and_grads(shift_labels=shifted, num_items_in_batch=1, skip_logits=True)
    torch.testing.assert_close(summed.loss, plain.loss * total, rtol=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="give labels or shift_labels"):
        model(ids, skip_logits=True)


def test_the_loss_without_logits_under_bf16_autocast_and_compiled(tokenizer):
    """Under bf16 autocast the head's products run in bf16 as the plain head's do: the same loss and gradients
    to bf16 precision, with the gradient of the head summed in float32; torch.compile gives the same."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer)).train()
    ids = torch.randint(0, len(tokenizer), (2, 64))

    def loss_and_grad(module, **kwargs):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module(ids, labels=ids, **kwargs).loss
        loss.backward()
        return loss.detach(), model.model.embed_tokens.weight.grad.clone()

    plain_loss, plain_grad = loss_and_grad(model)
    fused_loss, fused_grad = loss_and_grad(model, skip_logits=True)
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-2, rtol=1e-2)
    assert torch.nn.functional.cosine_similarity(fused_grad.flatten(), plain_grad.flatten(), dim=0) > 0.999
    compiled_loss, compiled_grad = loss_and_grad(torch.compile(model), skip_logits=True)
    torch.testing.assert_close(compiled_loss, fused_loss, atol=1e-2, rtol=1e-2)
    assert torch.nn.functional.cosine_similarity(compiled_grad.flatten(), fused_grad.flatten(), dim=0) > 0.999
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(model(ids, labels=ids, skip_logits=True).loss, model(ids, labels=ids).loss)


@pytest.mark.parametrize("shape", [(3, 40, 64), (3, 40, 4, 16)])
def test_rms_norm_gradients_on_cpu_equal_the_formulas_in_float64(shape):
    """RMSNorm's CPU training path (LayerNorm's backward kernel plus a correction) against autograd through
    ``x * rsqrt(mean(x^2) + eps) * w`` in float64, with a weight far from ones so that each term counts."""
    from chatforge.modeling.modeling_chatforge import ChatForgeRMSNorm

    torch.manual_seed(0)
    norm = ChatForgeRMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(-2.0, 2.0)
    hidden = (3.0 * torch.randn(shape) + 1.0).requires_grad_()
    grad = torch.randn(shape)
    norm(hidden).backward(grad)

    hidden64 = hidden.detach().double().requires_grad_()
    weight64 = norm.weight.detach().double().requires_grad_()
    reference = hidden64 * torch.rsqrt(hidden64.pow(2).mean(-1, keepdim=True) + 1e-5) * weight64
    reference.backward(grad.double())
    torch.testing.assert_close(norm(hidden).double(), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), hidden64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.weight.grad.double(), weight64.grad, atol=1e-4, rtol=1e-5)


def test_rotary_projection_on_cpu_gives_the_values_and_gradients_of_rotating_after_a_split(tokenizer):
    """The attention's CPU training path (:class:`_RotaryQKV`) against splitting the projection and rotating
    with ``apply_rotary_pos_emb``, in float64, on packed rows whose positions differ row by row."""
    from chatforge.modeling.modeling_chatforge import ChatForgeAttention, apply_rotary_pos_emb

    config = small_config(tokenizer)
    torch.manual_seed(0)
    attention = ChatForgeAttention(config, layer_idx=0).double()
    model = ChatForgeModel(config).double()
    hidden = torch.randn(2, 12, config.hidden_size, dtype=torch.float64, requires_grad=True)
    position_ids = torch.tensor([list(range(12)), [*range(5), *range(7)]])
    cos, sin = model.rotary_emb(hidden, position_ids)
    grads = [torch.randn(2, heads, 12, config.head_dim, dtype=torch.float64)
             for heads in (config.num_attention_heads, config.num_key_value_heads, config.num_key_value_heads)]

    fast = attention.project(hidden, (cos, sin))
    torch.autograd.backward(fast, grads)
    fast_grads = hidden.grad.clone(), attention.qkv_proj.weight.grad.clone()
    hidden.grad = attention.qkv_proj.weight.grad = None

    query, key, value = attention.qkv_proj(hidden).split(attention.qkv_split, dim=-1)
    query, key, value = (part.unflatten(-1, (-1, config.head_dim)).transpose(1, 2) for part in (query, key, value))
    reference = (*apply_rotary_pos_emb(query, key, cos, sin), value)
    torch.autograd.backward(reference, grads)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast_grads[0], hidden.grad)
    torch.testing.assert_close(fast_grads[1], attention.qkv_proj.weight.grad)


def test_swiglu_on_cpu_gives_the_values_and_gradients_of_the_plain_formula():
    """The MLP's CPU training path (:class:`_SwiGLU`) against ``silu(gate) * up`` through autograd, in float64."""
    from chatforge.modeling.modeling_chatforge import _SwiGLU

    torch.manual_seed(0)
    gate_up = torch.randn(2, 7, 2 * 24, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 7, 24, dtype=torch.float64)
    fast = _SwiGLU.apply(gate_up)
    fast.backward(grad)
    fast_grad = gate_up.grad.clone()
    gate_up.grad = None
    gate, up = gate_up.chunk(2, dim=-1)
    reference = torch.nn.functional.silu(gate) * up
    reference.backward(grad)
    torch.testing.assert_close(fast, reference)
    torch.testing.assert_close(fast_grad, gate_up.grad)
