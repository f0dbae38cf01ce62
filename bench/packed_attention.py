"""Training on packed rows: ChatForge's SDPA on each packed document alone against SDPA over the whole row under
the block-diagonal mask (what the model ran before, and what it still runs on a GPU or when compiled).

Both run the same training step (forward, next-token loss, backward, AdamW) of the same model on the same rows,
in rounds of alternating order so that machine noise hits both alike. The reference gets the mask transformers'
mask builder makes from the positions, handed over as a 4D mask. Prints tokens/s of each and the median per-round
ratio (above 1.0 means by-document is faster).

    python bench/packed_attention.py                                # SFT's rows: one row of 512, conversations packed
    python bench/packed_attention.py --rows 16 --seq-len 128 --min-doc 64 --max-doc 400   # pretraining's rows
"""

import argparse
import random
import sys
from functools import partial
from pathlib import Path

import torch
from transformers.masking_utils import create_causal_mask

sys.path.insert(0, str(Path(__file__).parent))
from side_by_side import rates_in_alternating_rounds, report, training_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rows", type=int, default=1, help="rows per step (SFT's padding-free batches are one row)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--min-doc", type=int, default=20, help="shortest packed document, in tokens")
    parser.add_argument("--max-doc", type=int, default=120, help="longest packed document (cut at the row's end)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    return parser.parse_args()


def packed_positions(rows: int, seq_len: int, low: int, high: int, rng: random.Random) -> torch.Tensor:
    """Positions restarting at 0 for each document, documents of ``low``..``high`` tokens filling each row."""
    out = []
    for _ in range(rows):
        row: list[int] = []
        while len(row) < seq_len:
            row += range(min(rng.randint(low, high), seq_len - len(row)))
        out.append(row)
    return torch.tensor(out)


def main() -> None:
    args = parse_args()
    model = training_model(args.preset)
    config = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    positions = packed_positions(args.rows, args.seq_len, args.min_doc, args.max_doc, random.Random(0))
    ids = torch.randint(0, config.vocab_size, positions.shape)
    embeds = model.get_input_embeddings()(ids)
    block_mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, cache=None,
                                    position_ids=positions)
    runners = {"by_document": {}, "block_mask": {"attention_mask": block_mask}}

    def step(extra: dict) -> None:
        model(input_ids=ids, position_ids=positions, labels=ids, skip_logits=True, **extra).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rates = rates_in_alternating_rounds({name: partial(step, extra) for name, extra in runners.items()},
                                        args.rounds, args.steps, ids.numel())
    documents = int((positions == 0).sum())
    print(f"{args.preset}, {args.rows} row(s) x {args.seq_len} tokens, {documents} documents, "
          f"{torch.get_num_threads()} threads")
    report(rates, "tokens/s", "by_document", "block_mask")


if __name__ == "__main__":
    main()
