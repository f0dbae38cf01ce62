import pytest
import torch
from conftest import small_config

from chatforge.data import (
    IGNORE_INDEX,
    DataCollatorForChat,
    DataCollatorForPackedPretraining,
    DataCollatorForPreference,
)
from chatforge.modeling import ChatForgeForCausalLM, ChatForgeForSequenceClassification

EOS, PAD = 0, 4


def test_packing_restarts_positions_per_document_and_masks_segment_starts():
    collator = DataCollatorForPackedPretraining(eos_token_id=EOS, pad_token_id=PAD, seq_len=8)
    batch = collator([{"input_ids": [10, 11, 12]}, {"input_ids": list(range(20, 30))}, {"input_ids": [30]}])
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, EOS, 20, 21, 22, 23],
        [24, 25, 26, 27, 28, 29, EOS, 30],
        [EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 0, 1, 2, 3],
        [0, 1, 2, 3, 4, 5, 6, 0],  # the second document continues, cut off from its start
        [0, 0, 1, 2, 3, 4, 5, 6],
    ]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 11, 12, EOS, IGNORE_INDEX, 21, 22, 23],
        [IGNORE_INDEX, 25, 26, 27, 28, 29, EOS, IGNORE_INDEX],
        [IGNORE_INDEX] * 8,
    ]
    assert "attention_mask" not in batch


def test_packing_names_the_bad_example():
    collator = DataCollatorForPackedPretraining(eos_token_id=EOS, pad_token_id=PAD, seq_len=8)
    with pytest.raises(KeyError, match="example 1 has no 'input_ids'"):
        collator([{"input_ids": [1]}, {"text": "raw"}])


CHATS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ],
]


def test_chat_labels_cover_exactly_the_assistant_replies(tokenizer):
    batch = DataCollatorForChat(tokenizer)([{"messages": chat} for chat in CHATS])
    for row, chat in enumerate(CHATS):
        labels = batch["labels"][row]
        trained = tokenizer.decode(labels[labels != IGNORE_INDEX])
        replies = "".join(m["content"] + "<|im_end|>" for m in chat if m["role"] == "assistant")
        assert trained == replies
        real = batch["attention_mask"][row].bool()
        assert tokenizer.decode(batch["input_ids"][row][real]) == tokenizer.apply_chat_template(chat, tokenize=False)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_chat_collator_accepts_pre_tokenized_examples_and_truncates(tokenizer):
    encoded = tokenizer.apply_chat_template(CHATS[1], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    batch = DataCollatorForChat(tokenizer, max_length=10)([dict(encoded)])
    assert batch["input_ids"].shape == (1, 10)
    assert batch["input_ids"][0].tolist() == encoded["input_ids"][:10]


def test_chat_collator_refuses_conversations_without_assistant_turns(tokenizer):
    with pytest.raises(ValueError, match="example 0: conversation has no assistant message"):
        DataCollatorForChat(tokenizer)([{"messages": [{"role": "user", "content": "Hi"}]}])


def test_preference_batches_put_chosen_first_then_rejected(tokenizer):
    examples = [
        {"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5", "margin": 1.0},
        {"prompt": "Q: capital of France? A:", "chosen": " Paris", "rejected": " the the the the", "margin": 0.5},
    ]
    batch = DataCollatorForPreference(tokenizer)(examples)
    texts = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert texts == ["Q: 2+2? A: 4<|endoftext|>", "Q: capital of France? A: Paris<|endoftext|>",
                     "Q: 2+2? A: 5<|endoftext|>", "Q: capital of France? A: the the the the<|endoftext|>"]
    assert batch["margin"].tolist() == [1.0, 0.5]


def test_preference_collator_renders_conversations_with_the_chat_template(tokenizer):
    example = {"prompt": [{"role": "user", "content": "Hi"}],
               "chosen": [{"role": "assistant", "content": "Hello!"}],
               "rejected": [{"role": "assistant", "content": "Go away."}]}
    batch = DataCollatorForPreference(tokenizer)([example])
    chosen = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert chosen == "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>Hello!<|im_end|>"


def test_preference_collator_trains_a_reward_model_with_trl(tokenizer, tmp_path):
    """TRL's RewardTrainer takes the collator as is and learns to prefer the right answers."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs = [{"prompt": f"Q: {a}+{b}? A:", "chosen": f" {a + b}", "rejected": f" {a + b + 1 + (a % 3)}"}
             for a in range(20) for b in range(10)]
    torch.manual_seed(0)
    model = ChatForgeForSequenceClassification(small_config(tokenizer, num_labels=1))
    args = RewardConfig(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
                        report_to=[], save_strategy="no", logging_steps=10, use_cpu=True, bf16=False,
                        activation_checkpointing=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                            processing_class=tokenizer, data_collator=DataCollatorForPreference(tokenizer))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]


def _arithmetic_chats(seed: int, n: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        chats.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                   {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    return chats


@pytest.mark.parametrize("collate_with_chatforge", [True, False], ids=["chatforge-collator", "trl-assistant-only"])
def test_chat_format_trains_with_trl_sft_on_assistant_tokens(tokenizer, tmp_path, collate_with_chatforge):
    """TRL's SFTTrainer learns the assistant's replies, either through DataCollatorForChat or through
    TRL's own assistant_only_loss reading the template's {% generation %} markers."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer))
    extra = dict(dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False) \
        if collate_with_chatforge else dict(assistant_only_loss=True)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=16, learning_rate=3e-3,
                     report_to=[], save_strategy="no", use_cpu=True, bf16=False, activation_checkpointing=False,
                     per_device_eval_batch_size=32, **extra)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(_arithmetic_chats(0, 400)),
                         eval_dataset=Dataset.from_list(_arithmetic_chats(1, 64)),
                         data_collator=DataCollatorForChat(tokenizer) if collate_with_chatforge else None)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 2.0
