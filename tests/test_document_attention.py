"""``attn_implementation="sdpa_documents"``: a packed row attends document by document, as each document alone."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from chatforge.modeling import DOCUMENT_ATTENTION

LENGTHS = [5, 9, 3, 7]


def _llama(attention: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = attention
    return LlamaForCausalLM(config)


def _packed_row() -> tuple[torch.Tensor, dict]:
    """One row of four documents, with the keyword arguments TRL's padding-free collator gives."""
    torch.manual_seed(1)
    ids = torch.randint(0, 100, (1, sum(LENGTHS)))
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return ids, {"position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None], "cu_seq_lens_q": bounds,
                 "cu_seq_lens_k": bounds, "max_length_q": max(LENGTHS), "max_length_k": max(LENGTHS)}


def test_a_packed_row_attends_as_each_document_alone_with_sdpas_gradients():
    ids, packing = _packed_row()
    model = _llama(DOCUMENT_ATTENTION)
    out = model(input_ids=ids, labels=ids, **packing)  # with the cache generate() would make, too
    out.loss.backward()
    bounds = packing["cu_seq_lens_q"].tolist()
    alone = torch.cat([model(input_ids=ids[:, start:end]).logits.detach()
                       for start, end in zip(bounds[:-1], bounds[1:])], dim=1)
    torch.testing.assert_close(out.logits.detach(), alone, atol=1e-5, rtol=0)
    reference = _llama("sdpa")  # sdpa's block-diagonal mask, applied without a cache
    expected = reference(input_ids=ids, labels=ids, use_cache=False, **packing)
    expected.loss.backward()
    for (name, weight), (_, same) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(weight.grad, same.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_padded_batches_and_generation_are_sdpas(tmp_path):
    model, reference = _llama(DOCUMENT_ATTENTION), _llama("sdpa")
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                               reference(input_ids=ids, attention_mask=mask).logits)
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, reference.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                                     pad_token_id=0))
    model.save_pretrained(tmp_path)  # the folder loads as any model of its architecture does
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation != DOCUMENT_ATTENTION
