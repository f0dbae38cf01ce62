"""Held-out checks of a reward model: pairwise accuracy and ranking agreement (Kendall's tau)."""

from collections import defaultdict
from collections.abc import Sequence
from itertools import islice

import torch
from scipy.stats import kendalltau
from tqdm.auto import tqdm

from ..inference.packed_linear import packed_linears


@torch.no_grad()
def score_token_ids(model, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 32,
                    desc: str | None = None) -> list[float]:
    """The reward model's scalar for each token sequence: each distinct one scored once, in right-padded batches
    of similar lengths, longest first (against packed weights on a CPU, :mod:`~chatforge.inference.packed_linear`);
    ``desc`` names a progress bar."""
    device = next(model.parameters()).device
    distinct = sorted({tuple(ids) for ids in sequences}, key=len, reverse=True)
    score_of: dict[tuple, float] = {}
    with packed_linears(model):
        for start in tqdm(range(0, len(distinct), batch_size), desc=desc, unit="batch", leave=False,
                          disable=desc is None):
            batch = distinct[start:start + batch_size]
            input_ids = torch.full((len(batch), len(batch[0])), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(batch):
                input_ids[row, :len(ids)] = torch.as_tensor(ids)
                attention_mask[row, :len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            score_of.update(zip(batch, logits[:, 0].float().tolist()))
    return [score_of[tuple(ids)] for ids in sequences]


class RewardScorer:
    """A reward model's score of conversations, rendered with the tokenizer's chat template as RewardTrainer does;
    each distinct conversation is scored once however often it is asked about (pairs and rankings share them)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.scores: dict[tuple, float] = {}

    def __call__(self, conversations: Sequence[list[dict]], desc: str | None = None) -> list[float]:
        sequences = [tuple(self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=False))
                     for c in conversations]
        new = [ids for ids in sequences if ids not in self.scores]  # score_token_ids scores each distinct one once
        self.scores.update(zip(new, score_token_ids(self.model, new, self.tokenizer.pad_token_id, self.batch_size,
                                                    desc)))
        return [self.scores[ids] for ids in sequences]


def pairwise_accuracy(scorer: RewardScorer, pairs: Sequence[dict]) -> dict:
    """Share of ``{"chosen", "rejected"}`` conversation pairs where the chosen one scores higher."""
    scores = scorer([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], desc="scoring pairs")
    chosen, rejected = scores[:len(pairs)], scores[len(pairs):]
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs)), "pairs": len(pairs),
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / max(1, len(pairs))}


def ranking_agreement(scorer: RewardScorer, rankings: Sequence[dict]) -> dict:
    """Agreement of the reward model's order with K-way rankings: mean Kendall tau, the share where its top
    pick is the best completion, and pairwise accuracy (with the number of pairs) by (better kind, worse kind)
    where records name kinds."""
    taus, top1 = [], 0
    by_kind: dict = defaultdict(lambda: [0, 0])
    conversations = [record["prompt"] + [{"role": "assistant", "content": c}]
                     for record in rankings for c in record["completions"]]
    all_scores = iter(scorer(conversations, desc="scoring rankings"))
    for record in rankings:
        scores = list(islice(all_scores, len(record["completions"])))
        rank_of = {index: position for position, index in enumerate(record["ranking"])}
        taus.append(kendalltau([-rank_of[i] for i in range(len(scores))], scores).statistic)
        top1 += max(range(len(scores)), key=scores.__getitem__) == record["ranking"][0]
        if kinds := record.get("kinds"):
            ordered = record["ranking"]
            for position, better in enumerate(ordered):
                for worse in ordered[position + 1:]:
                    counts = by_kind[f"{kinds[better]} > {kinds[worse]}"]
                    counts[0] += scores[better] > scores[worse]
                    counts[1] += 1
    return {"kendall_tau": sum(taus) / max(1, len(taus)), "top1_accuracy": top1 / max(1, len(rankings)),
            "rankings": len(rankings),
            "pairwise_accuracy_by_kind": {key: {"accuracy": round(hit / total, 4), "pairs": total}
                                          for key, (hit, total) in sorted(by_kind.items())}}
