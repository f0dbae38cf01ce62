"""Seeded sampling of continuations, leaving the caller's random number streams untouched."""

import torch


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts, max_new_tokens: int = 32, seed: int = 0, top_k: int = 40,
                         temperature: float = 0.8) -> dict[str, str]:
    """Top-k sampled continuation of each prompt, each seeded with ``seed``; the model's train/eval mode and
    the global RNG state are restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for prompt in prompts:
            torch.manual_seed(seed)
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=top_k,
                                 temperature=temperature)
            samples[prompt] = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return samples
