import pytest
import torch
from conftest import assert_drawn_from
from scipy.stats import chi2_contingency
from transformers import GenerationConfig, LogitsProcessorList

from chatforge.inference.inverse_transform import InverseTransformSampler, as_greedy_with_sampler, draw


def test_draw_follows_the_probabilities_and_never_draws_an_impossible_token():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(64, generator=generator) * (torch.rand(64, generator=generator) < 0.5)
    tokens = draw(probs.expand(20000, -1), torch.rand(20000, generator=generator))
    assert probs[tokens].min() > 0
    assert assert_drawn_from(tokens.tolist(), probs.double() / probs.double().sum()) > 1e-3
    assert draw(probs[None], torch.zeros(1)).item() == probs.nonzero()[0].item()  # the lowest uniform number
    assert draw(probs[None], torch.tensor([1 - 1e-7])).item() == probs.nonzero()[-1].item()  # and the highest


def test_a_token_of_tiny_probability_keeps_its_share_at_the_end_of_a_large_vocabulary():
    """In float32 the cumulative sum no longer grows by 1e-9 after reaching 1: the last token would be lost."""
    probs = torch.zeros(1, 50_000)
    probs[0, :2], probs[0, -1] = 0.5, 1e-9
    assert draw(probs, torch.tensor([1 - 0.5e-9], dtype=torch.float64)).item() == 49_999
    assert draw(probs, torch.tensor([1 - 2e-9], dtype=torch.float64)).item() == 1


def first_tokens(model, config: GenerationConfig, prompt: list[int], rows: int, **kwargs) -> list[int]:
    input_ids = torch.tensor([prompt] * rows)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=config, **kwargs)
    return output[:, len(prompt)].tolist()


def test_greedy_decoding_with_the_sampler_samples_as_transformers_does(model, tokenizer):
    """The same temperature and truncation as ``do_sample=True``: the first tokens of 3,000 rows drawn each way
    are alike by a two-sample chi-square test, and none falls outside the top-k."""
    prompt = tokenizer("The history of", add_special_tokens=False)["input_ids"]
    sampling = GenerationConfig(do_sample=True, temperature=0.7, top_k=40, top_p=0.95, min_p=0.01, max_new_tokens=1,
                                pad_token_id=tokenizer.pad_token_id)
    greedy, processors = as_greedy_with_sampler(sampling)
    assert not greedy.do_sample and sampling.do_sample  # the caller's config is left as it was
    torch.manual_seed(0)
    ours = first_tokens(model, greedy, prompt, 3000, logits_processor=processors)
    theirs = first_tokens(model, sampling, prompt, 3000)
    with torch.no_grad():
        top_k = set(model(torch.tensor([prompt])).logits[0, -1].topk(40).indices.tolist())
    assert set(ours) <= top_k and len(set(ours)) > 10
    tokens = sorted(set(ours) | set(theirs))
    counts = torch.tensor([[sample.count(token) for token in tokens] for sample in (ours, theirs)])
    assert chi2_contingency(counts.numpy()).pvalue > 1e-3


def test_the_recorded_score_is_the_drawn_tokens_log_probability():
    warped = torch.log_softmax(torch.randn(4, 50), -1)
    scores = InverseTransformSampler(LogitsProcessorList())(torch.zeros(4, 1, dtype=torch.long), warped.clone())
    drawn = scores.argmax(-1, keepdim=True)
    assert torch.isinf(scores).sum() == 4 * 49
    torch.testing.assert_close(scores.gather(1, drawn), warped.gather(1, drawn))


@pytest.mark.parametrize("fields", [dict(num_beams=2), dict(num_return_sequences=2), dict(typical_p=0.5),
                                    dict(do_sample=False)])
def test_what_the_sampler_cannot_replace_is_left_to_transformers(fields):
    config = GenerationConfig(**{"do_sample": True, "temperature": 0.7, **fields})
    assert as_greedy_with_sampler(config) == (config, [])
