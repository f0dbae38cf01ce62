"""``chatforge model add-tools``: ChatForge's tool tokens and tool-aware template for a ChatML-style model
(SmolLM2's tokenizer), rendering its plain conversations unchanged and trainable with TRL's assistant-only loss."""

import copy
import subprocess
import sys

import pytest
import torch
from conftest import memorize, small_llama_config
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from trl.chat_template_utils import get_training_chat_template

from chatforge.errors import InvalidValue
from chatforge.inference.engine import Engine, SamplingParams
from chatforge.modeling.tool_protocol import STARTS_AS, TOOL_TOKENS, add_tool_protocol
from chatforge.tokenization.turn_format import turn_format
from chatforge.tools import default_toolbox, tool_exchange

CONVERSATIONS = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Thanks"}],
    [{"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": "It's \"quoted\"."}],
]
QUESTION = "What is 123 * 456?"
REPLY = "Let me compute. " + tool_exchange("calculator", "123 * 456", "11111") + "Done."


@pytest.fixture
def smol_tokenizer(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


def test_a_chatml_model_gets_the_tool_tokens_and_renders_its_conversations_as_before(smol_tokenizer):
    original = smol_tokenizer.chat_template
    assert turn_format(smol_tokenizer).default_system.startswith("You are a helpful AI assistant named SmolLM")
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config(smol_tokenizer))
    added = add_tool_protocol(model, smol_tokenizer)
    assert added == list(TOOL_TOKENS) and model.get_input_embeddings().num_embeddings == len(smol_tokenizer)
    ids = smol_tokenizer.convert_tokens_to_ids
    assert not model.config.tie_word_embeddings
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        for token, existing in STARTS_AS.items():  # a call starts where the model would end its turn
            assert torch.equal(matrix[ids(token)], matrix[ids(existing)])
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            assert smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == \
                smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                   chat_template=original)
    assert get_training_chat_template(smol_tokenizer) is None  # TRL's assistant-only loss takes it as it is
    rendered = smol_tokenizer.apply_chat_template([{"role": "user", "content": QUESTION},
                                                   {"role": "assistant", "content": REPLY}],
                                                  return_dict=True, return_assistant_tokens_mask=True)
    trained = smol_tokenizer.decode([token for token, keep in zip(rendered["input_ids"], rendered["assistant_masks"])
                                     if keep])
    assert trained == "Let me compute. <|tool_call_start|>calculator\n123 * 456<|tool_call_end|>Done.<|im_end|>"
    assert all(len(smol_tokenizer(token, add_special_tokens=False)["input_ids"]) == 1 for token in TOOL_TOKENS)
    assert add_tool_protocol(model, smol_tokenizer) == []  # a second time adds nothing


def test_after_learning_a_call_the_engine_runs_the_tool(smol_tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config(smol_tokenizer))
    add_tool_protocol(model, smol_tokenizer)
    memorize(model, smol_tokenizer, [[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": REPLY}]],
             steps=200)
    events = list(Engine(model, smol_tokenizer, toolbox=default_toolbox()).chat(
        [{"role": "user", "content": QUESTION}], SamplingParams(temperature=0, max_new_tokens=40)))
    # (the recorded output is wrong on purpose: only a tool that really runs shows 56088)
    assert [(e.kind, e.text) for e in events if e.kind in ("tool_call", "tool_output")][:2] == [
        ("tool_call", "123 * 456"), ("tool_output", "56088")]
    before_call = events[:[e.kind for e in events].index("tool_call")]
    assert "".join(e.text for e in before_call) == "Let me compute. "


def test_a_template_of_another_shape_is_refused_with_the_way_out(smol_tokenizer):
    other = copy.deepcopy(smol_tokenizer)
    other.chat_template = ("{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + ': ' + m['content'] + '\\n' -}}"
                           "{%- endfor -%}")
    with pytest.raises(InvalidValue, match="chat_template_path"):
        add_tool_protocol(LlamaForCausalLM(small_llama_config(other)), other)


def test_the_command_writes_a_folder_the_engine_uses_with_tools(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    LlamaForCausalLM(small_llama_config(smol_tokenizer)).save_pretrained(tmp_path / "base")
    smol_tokenizer.save_pretrained(tmp_path / "base")
    run = subprocess.run([sys.executable, "-m", "chatforge.cli", "model", "add-tools", str(tmp_path / "base"),
                          "--output", str(tmp_path / "tools")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    engine = Engine.from_pretrained(str(tmp_path / "tools"), toolbox=default_toolbox())
    assert engine.tools_supported and engine.end_of_turn == "<|im_end|>"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "tools").config.vocab_size == len(smol_tokenizer) + 4
