"""TRL's SFTTrainer, with the loss taken from the model's own logits at the scored positions when it trains on a CPU.

TRL computes the SFT loss with a fused LM head: it never builds the logits, projecting the hidden states onto the
vocabulary tile by tile, forward and again backward. On GPUs that runs as Triton kernels and saves the memory of the
logits; on a CPU (no Triton) the tiles run as fp32 PyTorch operations, outside bf16 autocast, and cost nearly as much
as the rest of the step (SmolLM2-135M's SFT recipe, 2 × 4 packed rows of 512 tokens, 2 cores: 26 s a step, 14.5 s
with full logits). There the model's own loss is used instead: the same next-token cross-entropy over the same
labels, with the head applied only where a label is scored (``logits_to_keep``; the prompts, system turns and tool
outputs that assistant-only loss leaves out are not projected onto the vocabulary). The token accuracy is logged as
TRL logs it; the entropy of the predictions is not.
"""

import torch
from transformers import Trainer
from trl import SFTTrainer

from ..data import IGNORE_INDEX


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions (``(batch, length)`` labels, unshifted) whose next token is scored in any row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().flatten()


class ScoredLogitsOnCPUSFTTrainer(SFTTrainer):
    """:class:`trl.SFTTrainer` whose loss, on a CPU, is the model's own loss from its logits at the scored
    positions (all positions where a label smoother or a custom loss function reads the logits)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs["use_cache"] = False
        labels = inputs["labels"]
        kept = slice(None)
        if self.label_smoother is None and self.compute_loss_func is None:
            kept = scored_positions(labels)
            inputs.update(logits_to_keep=kept, shift_labels=labels[:, 1:][:, kept])
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            targets = labels[:, 1:][:, kept]
            scored = targets != IGNORE_INDEX
            predicted = outputs.logits if isinstance(kept, torch.Tensor) else outputs.logits[:, :-1]
            right = (predicted.argmax(-1) == targets) & scored
            counts = self.accelerator.gather_for_metrics(torch.stack([right.sum(), scored.sum()])[None]).sum(0)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((counts[0] / counts[1].clamp(min=1)).item())
        return (loss, outputs) if return_outputs else loss
