import pytest
import torch
from conftest import small_llama_config
from transformers import DynamicCache, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from chatforge.inference import growing_cache as growing_module
from chatforge.inference.growing_cache import GrowingLayer, growing_cache


def test_layer_holds_what_dynamics_layer_holds_and_steps_write_in_place():
    """Prefill, then 300 one-column steps with rows selected, the cache cropped, leading columns dropped by
    assignment and rows repeated on the way: after every step both layers hand out the same keys and values, and
    the growing layer's buffers move only when full or when another tensor was assigned."""
    torch.manual_seed(0)
    reference, layer = DynamicLayer(), GrowingLayer()
    buffers = []

    def update(columns: int, rows: int) -> None:
        keys, values = torch.randn(rows, 2, columns, 8), torch.randn(rows, 2, columns, 8)
        expected, got = reference.update(keys, values), layer.update(keys, values)
        for want, have in zip(expected, got):
            assert torch.equal(have, want)
        buffers.append(layer.key_buffer.data_ptr())

    update(5, rows=3)
    for step in range(300):
        if step == 50:
            for cache_layer in (reference, layer):
                cache_layer.batch_select_indices(torch.tensor([2, 0, 0]))
        if step == 100:
            for cache_layer in (reference, layer):
                cache_layer.crop(-3)
        if step == 150:
            for cache_layer in (reference, layer):
                cache_layer.keys, cache_layer.values = cache_layer.keys[:, :, 4:], cache_layer.values[:, :, 4:]
        if step == 200:
            for cache_layer in (reference, layer):
                cache_layer.batch_repeat_interleave(2)
        update(1, rows=3 if step < 200 else 6)
    moves = sum(a != b for a, b in zip(buffers, buffers[1:]))
    # copied by the selection, once full (at 5 + 128 columns), after the assignment and by the repeat
    assert moves == 4, moves


@pytest.mark.parametrize("architecture", ["chatforge", "llama"])
def test_generation_from_a_growing_cache_is_generation_from_transformers_cache(architecture, model, tokenizer,
                                                                                monkeypatch):
    """Left-padded greedy generation past several regrowths: the same tokens and the same scores at every step as
    with transformers' own cache."""
    monkeypatch.setattr(growing_module, "GROWTH", 3)
    if architecture == "llama":
        torch.manual_seed(0)
        model = LlamaForCausalLM(small_llama_config(tokenizer, initializer_range=0.1)).eval()
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("The river", "In 1990 the war")]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= width - torch.tensor([len(p) for p in prompts])[:, None]).long()
    settings = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, output_scores=True,
                    return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, cache=DynamicCache(config=model.config), **settings)
        cache = growing_cache(model.config)
        grown = model.generate(input_ids=ids, attention_mask=mask, cache=cache, **settings)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert torch.equal(grown.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(grown.scores), torch.stack(plain.scores), atol=1e-5, rtol=1e-5)
