import pytest
import torch
from conftest import small_llama_config
from transformers import LlamaForCausalLM

from chatforge.inference import packed_linear
from chatforge.inference.engine import Engine, SamplingParams
from chatforge.inference.packed_linear import packed_linears

pytestmark = pytest.mark.skipif(not packed_linear.packing_available(), reason="this PyTorch has no oneDNN")


def test_a_layer_s_products_are_nn_linear_s_inside_and_its_own_forward_returns_after():
    """Few rows and many, with and without bias, 2-D, 3-D and transposed inputs: the same products as
    ``nn.Linear`` up to fp32 rounding; under gradients the layer's own product runs (gradients reach the weight);
    after the context the layers are as they were, also when an error leaves it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 200), torch.nn.Linear(200, 50, bias=False))
    inputs = [torch.randn(3, 96), torch.randn(4, 1, 96), torch.randn(700, 96), torch.randn(96, 5).t()]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    with packed_linears(model):
        assert all("forward" in vars(layer) for layer in model)
        with torch.no_grad():
            for x, want in zip(inputs, expected):
                torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
        model(inputs[0]).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert not any("forward" in vars(layer) for layer in model)
    with pytest.raises(RuntimeError), packed_linears(model):
        raise RuntimeError("generation failed")
    assert not any("forward" in vars(layer) for layer in model)


def test_layers_that_do_not_fit_are_left_as_they_are():
    """bf16 weights, and a layer already given a forward (an outer context), keep theirs."""
    bf16 = torch.nn.Linear(8, 8).to(torch.bfloat16)
    outer = torch.nn.Linear(8, 8)
    with packed_linears(outer):
        given = vars(outer)["forward"]
        with packed_linears(torch.nn.Sequential(bf16, outer)):
            assert "forward" not in vars(bf16) and vars(outer)["forward"] is given
        assert vars(outer)["forward"] is given


def test_greedy_generation_through_the_engine_is_the_same_either_way(tokenizer, monkeypatch):
    """Left-padded greedy replies of a Llama-family model (GQA) decoded against the packed weights equal those of
    ``nn.Linear``'s own product, token for token."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config(tokenizer, initializer_range=0.1)).eval()
    engine = Engine(model, tokenizer)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("The river", "In 1990 the war", "A", "Rivers flow into the sea and")]
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    packed = engine.generate_ids(prompts, params)
    monkeypatch.setattr(packed_linear, "packing_available", lambda: False)
    plain = engine.generate_ids(prompts, params)
    assert packed == plain and sum(map(len, packed)) > 4 * 5
