"""The GRPO trainer of the recipes: completions scored on packed rows (:class:`PackedGRPOTrainer`) and, where
transformers generates them, sampled by inverse transform.

TRL samples each batch's completions with one ``model.generate(do_sample=True)``, whose ``torch.multinomial``
spends an exponential random number per vocabulary entry and row at every step. Here that call decodes greedily
with :class:`~chatforge.inference.inverse_transform.InverseTransformSampler` as its last logits processor, which
applies the same temperature and truncation and draws from the same distribution with one uniform number per row.
"""

import contextlib
import functools

from transformers import LogitsProcessorList

from ..inference.inverse_transform import as_greedy_with_sampler
from .packed_scoring import PackedGRPOTrainer


@contextlib.contextmanager
def generating_with(model, processors: LogitsProcessorList):
    """Inside, ``model.generate`` is given ``processors`` as its ``logits_processor``."""
    own = vars(model).get("generate")
    model.generate = functools.partial(model.generate, logits_processor=processors)
    try:
        yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own


class ChatForgeGRPOTrainer(PackedGRPOTrainer):
    """TRL's GRPOTrainer scoring on packed rows, its transformers rollouts drawn by inverse transform (vLLM and
    continuous batching sample as TRL has them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollout_processors = LogitsProcessorList()
        if not (self.use_vllm or self.use_transformers_continuous_batching):
            self.generation_config, self.rollout_processors = as_greedy_with_sampler(self.generation_config)

    def _generate_single_turn(self, *args, **kwargs):
        with generating_with(self.accelerator.unwrap_model(self.model_wrapped), self.rollout_processors):
            return super()._generate_single_turn(*args, **kwargs)


__all__ = ["ChatForgeGRPOTrainer", "generating_with"]
