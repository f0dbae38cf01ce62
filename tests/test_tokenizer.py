import copy
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from chatforge.cli import main
from chatforge.tokenization import (
    RESPONSE_TEMPLATE,
    SPECIAL_TOKENS,
    ChatForgeTokenizer,
    render_tokens,
    token_pieces,
    train_tokenizer,
)
from chatforge.tokenization.training import GPT4_SPLIT_PATTERN, build_backend


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_decode_encode_round_trips_any_unicode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["<|im_start|>", "<|im_end|>", " ", "\n", "a", "é", "🤖", "<|", "|>"]), max_size=30))
def test_round_trip_with_special_token_text(tokenizer, parts):
    text = "".join(parts)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_every_byte_is_in_the_vocabulary(tokenizer):
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = tokenizer.get_vocab()
    assert all(char in vocab for char in ByteLevel.alphabet())
    assert len(ByteLevel.alphabet()) == 256


def test_special_tokens_are_single_ids_in_order(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False) == [expected_id]
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"


def test_gpt4_split_keeps_numbers_in_groups_of_three_and_words_with_leading_space():
    pieces = [p for p, _ in build_backend().pre_tokenizer.pre_tokenize_str("I've 12345 apples!!\n\n")]
    # ByteLevel maps " " to "Ġ" and "\n" to "Ċ".
    assert pieces == ["I", "'ve", "Ġ", "123", "45", "Ġapples", "!!ĊĊ"]
    assert "\\p{L}" in GPT4_SPLIT_PATTERN


def test_single_digit_split_keeps_numbers_out_of_merges():
    pieces = [p for p, _ in build_backend(max_number_digits=1).pre_tokenizer.pre_tokenize_str("19*92 = 1748")]
    assert pieces == ["1", "9", "*", "9", "2", "Ġ=", "Ġ", "1", "7", "4", "8"]
    numbers = ["In 1998, 1999 and 2001 the 250 members met 12 times."] * 50
    grouped, single = (train_tokenizer(numbers, 320, show_progress=False, max_number_digits=k) for k in (3, 1))
    assert any(piece.isdigit() and len(piece) > 1 for piece in grouped.get_vocab())
    assert not any(piece.isdigit() and len(piece) > 1 for piece in single.get_vocab())
    assert single.decode(single.encode("In 1998, 250 members")) == "In 1998, 250 members"
    with pytest.raises(ValueError, match="max_number_digits=0 must be at least 1"):
        build_backend(max_number_digits=0)


def test_merges_compress_english_text(tokenizer, documents):
    text = documents[-1]
    assert len(text.encode()) / len(tokenizer.encode(text)) > 2.0  # raw bytes would give 1.0


CHAT = [
    {"role": "system", "content": "You are chatforge."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


def test_chat_template_renders_exactly_the_chatforge_format(tokenizer):
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert rendered == (
        "<|im_start|>system<|im_sep|>You are chatforge.<|im_end|>"
        "<|im_start|>user<|im_sep|>What is 2+2?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>2+2 = 4.<|im_end|>"
        "<|im_start|>user<|im_sep|>Thanks!<|im_end|>"
        "<|im_start|>assistant<|im_sep|>You're welcome.<|im_end|>"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user<|im_sep|>What is 2+2?<|im_end|><|im_start|>assistant<|im_sep|>")


def test_chat_template_rejects_unknown_roles(tokenizer):
    with pytest.raises(Exception, match="Unknown chat role narrator in message 0"):
        tokenizer.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_exactly_the_assistant_replies(tokenizer):
    encoded = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    spans, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(span) for span in spans] == ["2+2 = 4.<|im_end|>", "You're welcome.<|im_end|>"]


CALCULATOR = {"type": "function", "function": {"name": "calculator", "description": "Arithmetic.", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
CALLED = [{"role": "user", "content": "What is 6 * 7?"},
          {"role": "assistant", "content": "Let me see.", "tool_calls": [
              {"id": "c1", "type": "function",
               "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}]},
          {"role": "tool", "tool_call_id": "c1", "content": "42"},
          {"role": "assistant", "content": "It is 42."}]


def test_declared_tools_and_their_calls_render_as_the_engine_writes_them(tokenizer):
    """Tools are listed in the system turn; a call and the tool's reply sit inside one assistant turn, as the
    engine lays them out when it runs tools itself; the loss covers the calls but not the outputs."""
    rendered = tokenizer.apply_chat_template(CHAT[:1] + CALLED, tools=[CALCULATOR], tokenize=False)
    assert rendered.startswith("<|im_start|>system<|im_sep|>You are chatforge.\n\nYou can call these tools.")
    assert '\n{"type": "function", "function": {"name": "calculator"' in rendered
    assert rendered.endswith(
        "<|im_start|>user<|im_sep|>What is 6 * 7?<|im_end|><|im_start|>assistant<|im_sep|>Let me see."
        '<|tool_call_start|>calculator\n{"expression": "6*7"}<|tool_call_end|><|tool_output_start|>42'
        "<|tool_output_end|>It is 42.<|im_end|>")
    assert tokenizer.apply_chat_template(CALLED[:3], tools=[CALCULATOR], tokenize=False,
                                         add_generation_prompt=True).endswith("<|tool_output_end|>")
    encoded = tokenizer.apply_chat_template(CALLED, tools=[CALCULATOR], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    trained = tokenizer.decode([t for t, flag in zip(encoded["input_ids"], encoded["assistant_masks"]) if flag])
    assert trained == ('Let me see.<|tool_call_start|>calculator\n{"expression": "6*7"}<|tool_call_end|>'
                       "It is 42.<|im_end|>")


def test_parse_response_reads_calls_back_out_of_a_generated_turn(tokenizer, tmp_path):
    """With ChatForge's response template set (it is saved with the tokenizer), transformers' ``parse_response``
    reads calls back."""
    with_template = copy.deepcopy(tokenizer)
    with_template.response_template = RESPONSE_TEMPLATE
    with_template.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt = loaded.apply_chat_template(CALLED[:1], tools=[CALCULATOR], tokenize=False, add_generation_prompt=True)
    parsed = loaded.parse_response('Let me see.<|tool_call_start|>calculator\n{"expression": "6*7"}'
                                   "<|tool_call_end|>", prefix=prompt, tools=[CALCULATOR])
    assert parsed == {"role": "assistant", "content": "Let me see.", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}]}
    after_output = loaded.apply_chat_template(CALLED[:3], tools=[CALCULATOR], tokenize=False,
                                              add_generation_prompt=True)
    assert loaded.parse_response("It is 42.", prefix=after_output) == {"role": "assistant", "content": "It is 42."}


def test_save_and_load_through_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, ChatForgeTokenizer)
    assert (tmp_path / "chat_template.jinja").exists()
    text = "Grüße, 世界! <|im_start|>user"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.apply_chat_template(CHAT, tokenize=False) == tokenizer.apply_chat_template(CHAT, tokenize=False)


def test_vocab_smaller_than_special_tokens_and_bytes_is_refused():
    with pytest.raises(ValueError, match="vocab_size=100 is smaller than the 9 special tokens plus 256 bytes"):
        train_tokenizer(["some text"], vocab_size=100)


def test_render_tokens_shows_each_token_and_the_ids(tokenizer):
    text = "Hello world 🤖"
    shown = render_tokens(tokenizer, text, color=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert f"ids: {ids}" in shown
    assert f"{len(ids)} tokens, {len(text)} characters, {len(text.encode())} bytes" in shown
    pieces = [piece for _, piece in token_pieces(tokenizer, text)]
    assert len(pieces) == len(ids) and pieces[-1] == "🤖" and pieces[-2] == "\ufffd"  # 🤖 spans 4 byte tokens
    assert "".join(piece for piece in pieces if piece != "\ufffd") == text
    assert shown.splitlines()[0] == "".join(f"[{piece}]" for piece in pieces)


def test_cli_trains_and_shows_a_tokenizer(tmp_path, documents):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents[:200]), encoding="utf-8")
    out = tmp_path / "tok"
    run = subprocess.run([sys.executable, "-m", "chatforge.cli", "tokenizer", "train", "--input", str(corpus),
                          "--vocab-size", "512", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tokenizer: 512 tokens" in run.stdout
    assert len(AutoTokenizer.from_pretrained(out)) == 512
    show = subprocess.run([sys.executable, "-m", "chatforge.cli", "tokenizer", "show", str(out), "hi there"],
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0 and "ids: [" in show.stdout


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe broken", "not valid UTF-8 at byte 0"),
    (b'{"text": "ok"}\n{"body": "no text"}\n', ":2: record has no 'text' field"),
    (b'{"text": "ok"}\n{not json\n', ":2: invalid JSON"),
])
def test_cli_names_the_bad_file_and_record(tmp_path, content, message):
    bad = tmp_path / ("bad.txt" if content.startswith(b"\xff") else "bad.jsonl")
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as exit:
        main(["tokenizer", "train", "--input", str(bad), "--vocab-size", "512", "--output", str(tmp_path / "tok")])
    assert str(bad) in str(exit.value.code) and message in str(exit.value.code)
    assert not (tmp_path / "tok").exists()
