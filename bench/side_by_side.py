"""What the side-by-side benches share: the model they time, and timing two (or more) ways of doing the same step
in rounds of alternating order, so that machine noise hits each alike (the median per-round ratio is printed)."""

import statistics
import time
from collections.abc import Callable

import torch

from chatforge.modeling import ChatForgeConfig, ChatForgeForCausalLM


def training_model(preset: str) -> ChatForgeForCausalLM:
    """A ChatForge model of ``preset``, seeded, in training mode, on SDPA."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(ChatForgeConfig.from_preset(preset)).train()
    model.set_attn_implementation("sdpa")
    return model


def rates_in_alternating_rounds(steps: dict[str, Callable[[], None]], rounds: int, steps_per_round: int,
                                items_per_step: int) -> dict[str, list[float]]:
    """Items per second of each step, one figure a round; every step runs once first as a warm-up, and the
    order of the steps flips from one round to the next."""
    for step in steps.values():
        step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        for name in list(steps) if round_index % 2 == 0 else list(reversed(steps)):
            started = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name]()
            rates[name].append(steps_per_round * items_per_step / (time.perf_counter() - started))
    return rates


def report(rates: dict[str, list[float]], unit: str, faster: str, *slower: str) -> None:
    """Each step's median rate, and the median per-round ratio of ``faster`` to each of ``slower``."""
    for name, values in rates.items():
        print(f"{name:>12}: {statistics.median(values):,.0f} {unit}")
    for reference in slower:
        ratios = [a / b for a, b in zip(rates[faster], rates[reference])]
        print(f"{faster} / {reference}: {statistics.median(ratios):.3f} (median of {len(ratios)} rounds)")
