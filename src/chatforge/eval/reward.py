"""Held-out checks of a reward model: pairwise accuracy and ranking agreement (Kendall's tau)."""

from collections import defaultdict
from collections.abc import Sequence

import torch
from scipy.stats import kendalltau
from tqdm.auto import tqdm


@torch.no_grad()
def score_token_ids(model, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """The reward model's scalar for each token sequence (right-padded batches)."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.as_tensor(ids)
            attention_mask[row, :len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        scores += logits[:, 0].float().tolist()
    return scores


def score_conversations(model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 32) -> list[float]:
    """The reward of each conversation, rendered with the tokenizer's chat template as RewardTrainer does."""
    sequences = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=False) for c in conversations]
    return score_token_ids(model, sequences, tokenizer.pad_token_id, batch_size)


def pairwise_accuracy(model, tokenizer, pairs: Sequence[dict]) -> dict:
    """Share of ``{"chosen", "rejected"}`` conversation pairs where the chosen one scores higher."""
    chosen = score_conversations(model, tokenizer, [p["chosen"] for p in tqdm(pairs, desc="pairs", leave=False)])
    rejected = score_conversations(model, tokenizer, [p["rejected"] for p in pairs])
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs)), "pairs": len(pairs),
            "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / max(1, len(pairs))}


def ranking_agreement(model, tokenizer, rankings: Sequence[dict]) -> dict:
    """Agreement of the reward model's order with K-way rankings: mean Kendall tau, the share where its top
    pick is the best completion, and pairwise accuracy by (better kind, worse kind) where records name kinds."""
    taus, top1 = [], 0
    by_kind: dict = defaultdict(lambda: [0, 0])
    for record in tqdm(rankings, desc="rankings", leave=False):
        conversations = [record["prompt"] + [{"role": "assistant", "content": c}] for c in record["completions"]]
        scores = score_conversations(model, tokenizer, conversations)
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
            "pairwise_accuracy_by_kind": {key: round(hit / total, 4) for key, (hit, total) in sorted(by_kind.items())}}
