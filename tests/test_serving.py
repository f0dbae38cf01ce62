"""``chatforge serve`` as a real process on 127.0.0.1, driven by the official ``openai`` client and raw HTTP."""

import concurrent.futures
import contextlib
import copy
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import CHATML_TEMPLATE, assert_drawn_from, memorize, small_config, small_llama_config
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from chatforge.inference.batch_sampling import sample_tokens
from chatforge.inference.engine import Engine, SamplingParams
from chatforge.modeling import ChatForgeForCausalLM, set_generation_defaults
from chatforge.serving.tool_calls import ToolCallReader
from chatforge.tokenization import RESPONSE_TEMPLATE
from chatforge.tokenization.turn_format import tool_chat_template
from chatforge.tools import default_toolbox, tool_exchange

QUESTION = "What is 123 * 456?"
# The recorded output is wrong on purpose: only a server that really runs the tool can show 56088.
TRAINED_REPLY = "Let me compute. " + tool_exchange("calculator", "123 * 456", "11111") + "Done."
MARKUP_QUESTION = "Show me markup."
# Markdown to render, and HTML that must stay inert on the page.
MARKUP_REPLY = ("**Bold** <img src=x onerror=\"document.title='pwned'\">"
                "<script>document.title='pwned'</script>\n\n```\nx = 1\n```")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER_CALL = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
WEATHER_ANSWERED = [*WEATHER_QUESTION, {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
WEATHER_REPLY = "It is 18 C and sunny."
KEY = "test-key"
ARTIFACTS = Path(os.environ.get("CHATFORGE_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny model that answers QUESTION with a calculator call, and calls a declared weather tool, saved as a
    folder."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1, max_position_embeddings=384)).eval()
    set_generation_defaults(model, tokenizer)
    memorize(model, tokenizer, [[{"role": "user", "content": QUESTION},
                                 {"role": "assistant", "content": TRAINED_REPLY}],
                                [{"role": "user", "content": MARKUP_QUESTION},
                                 {"role": "assistant", "content": MARKUP_REPLY}],
                                {"messages": [*WEATHER_ANSWERED, {"role": "assistant", "content": WEATHER_REPLY}],
                                 "tools": [WEATHER]}], steps=400)
    folder = tmp_path_factory.mktemp("served") / "tiny-chat"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_batched_sampling_draws_each_row_from_its_own_distribution(model, tokenizer):
    """One batch, three settings: temperature 1 and 0.7 rows follow their softmax (a goodness-of-fit test on the
    model's next-token distribution), top-p 0.5 does not, temperature 0 is the argmax; a row's seed fixes it."""
    prompt = tokenizer("The history of", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].float()
    settings = [SamplingParams(temperature=1.0, top_k=None), SamplingParams(temperature=0.7, top_k=None),
                SamplingParams(temperature=1.0, top_k=None, top_p=0.5), SamplingParams(temperature=0)]
    generators = [torch.Generator().manual_seed(row) for row in range(4)]
    draws = [sample_tokens(logits.expand(4, -1).clone(), settings, generators) for _ in range(3000)]
    columns = list(zip(*draws))
    for row, temperature in ((0, 1.0), (1, 0.7)):
        assert assert_drawn_from(list(columns[row]), torch.softmax(logits.double() / temperature, -1)) > 1e-3
    assert assert_drawn_from(list(columns[2]), torch.softmax(logits.double(), -1)) < 1e-6
    assert set(columns[3]) == {int(logits.argmax())}
    again = [torch.Generator().manual_seed(row) for row in range(4)]
    assert sample_tokens(logits.expand(4, -1).clone(), settings[::-1], again[::-1])[::-1] == list(draws[0])


@contextlib.contextmanager
def serving(folder: Path, *options: str):
    """``chatforge serve FOLDER OPTIONS`` on a free port of 127.0.0.1, stopped afterwards; its base URL."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "serve", str(folder), "--port", str(port),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def server(model_dir):
    """The tiny chat model served with the calculator and an API key."""
    with serving(model_dir, "--tools", "calculator", "--api-key", KEY, "--max-tokens", "64") as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def _ask(client, **fields):
    return client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": QUESTION}],
                                          **fields)


def test_a_chat_reply_runs_the_calculator_on_the_server(client, model_dir):
    reply = _ask(client, temperature=0)
    choice = reply.choices[0]
    assert choice.message.content == "Let me compute. Done." and choice.finish_reason == "stop"
    assert choice.message.model_extra["chatforge_tools"] == [
        {"name": "calculator", "arguments": "123 * 456", "output": "56088"}]
    engine = Engine.from_pretrained(str(model_dir), toolbox=default_toolbox())
    *_, done = engine.chat([{"role": "user", "content": QUESTION}], SamplingParams(temperature=0, max_new_tokens=64))
    assert reply.usage.completion_tokens == done.tokens and reply.usage.prompt_tokens == 24
    assert client.models.list().data[0].id == "tiny-chat"


def test_a_streamed_reply_is_the_whole_reply_in_pieces(client):
    chunks = list(_ask(client, temperature=0, stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    text = "".join(delta.content or "" for delta in deltas)
    # (how many pieces the text comes in depends on how fast the client reads; the tool call always splits it)
    assert text == "Let me compute. Done." and sum(bool(delta.content) for delta in deltas) >= 2
    extras = [delta.model_extra for delta in deltas if delta.model_extra]
    assert extras == [{"chatforge_tool_call": {"name": "calculator", "arguments": "123 * 456"}},
                      {"chatforge_tool_output": {"name": "calculator", "output": "56088"}}]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == _ask(client, temperature=0).usage.completion_tokens


def test_declared_tools_come_back_as_tool_calls_and_their_results_are_answered(client):
    """The tool is the client's: the model's call ends the reply as OpenAI ``tool_calls`` (the server's own
    calculator is not run for it), and the conversation goes on once the client sends the result."""
    called = client.chat.completions.create(model="tiny-chat", messages=WEATHER_QUESTION, tools=[WEATHER],
                                            temperature=0)
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("function", "get_weather", {"city": "Paris"})]
    streamed = list(client.chat.completions.create(model="tiny-chat", messages=WEATHER_QUESTION, tools=[WEATHER],
                                                   temperature=0, stream=True))
    calls = [call for chunk in streamed for call in chunk.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == [
        (0, "get_weather", choice.message.tool_calls[0].function.arguments)]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    answered = client.chat.completions.create(model="tiny-chat", messages=WEATHER_ANSWERED, tools=[WEATHER],
                                              temperature=0)
    assert answered.choices[0].message.content == WEATHER_REPLY and answered.choices[0].finish_reason == "stop"
    assert answered.choices[0].message.tool_calls is None


def test_seeds_n_and_stop_strings(client):
    def sample(seed):  # a question the model never learned: its replies vary
        return client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Rivers?"}],
                                              temperature=1.0, seed=seed, n=2, max_tokens=12)

    first, again, other = sample(7), sample(7), sample(8)
    texts = [c.message.content for c in first.choices]
    assert len(texts) == 2 and texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in other.choices]
    stopped = _ask(client, temperature=0, stop=[" comp"])
    assert stopped.choices[0].message.content == "Let me" and stopped.choices[0].finish_reason == "stop"
    capped = _ask(client, temperature=0, max_tokens=3)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3


def test_completions_continue_a_plain_prompt(client):
    reply = client.completions.create(model="tiny-chat", prompt=["The river", "In 1990"], max_tokens=5,
                                      temperature=0)
    assert len(reply.choices) == 2 and all(c.finish_reason in ("length", "stop") for c in reply.choices)
    assert reply.usage.completion_tokens <= 10 and all(c.text for c in reply.choices)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-chat", prompt="The river", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == reply.choices[0].text


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 400, "JSON"),
    ({"model": "tiny-chat", "messages": "hi"}, 400, "messages"),
    ({"model": "tiny-chat", "messages": []}, 400, "messages"),
    ({"model": "tiny-chat", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "word " * 500}]}, 400, "context"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}, 400, "limit"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "tools.0.function"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
      "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi", "tool_calls": [WEATHER_CALL]}]},
     400, "only assistant messages"),
    ({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temprature": 0}, 400, "temprature"),
])
def test_bad_requests_get_an_openai_style_error(server, body, status, message):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/v1/chat/completions", content=content,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_the_api_key_guards_everything_but_health(server):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.post(f"{server}/v1/completions", json={"model": "tiny-chat", "prompt": "x"}).status_code == 401
    assert httpx.get(f"{server}/health").status_code == 200


def test_concurrent_requests_are_decoded_together_and_a_vanished_client_frees_its_place(client, server):
    with httpx.stream("POST", f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny-chat", "messages": [{"role": "user", "content": QUESTION}],
                            "stream": True, "max_tokens": 64, "temperature": 1.0}) as response:
        next(response.iter_lines())  # the client reads the first event, then goes away
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda seed: _ask(client, temperature=0, seed=seed), range(8)))
    assert all(r.choices[0].message.content == "Let me compute. Done." for r in replies)
    assert httpx.get(f"{server}/health").json()["largest_batch"] > 1


def test_mixed_load_answers_every_well_formed_request_in_full(client, server):
    """64 requests at once: a tenth malformed, a tenth of the streams dropped after their first event; every
    well-formed one that stays is answered in full, and the server stays healthy."""
    rng = random.Random(0)
    kinds = ["malformed"] * 6 + ["dropped"] * 6 + ["whole"] * 26 + ["streamed"] * 26
    rng.shuffle(kinds)
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}

    def request(kind: str):
        if kind == "malformed":
            return httpx.post(f"{server}/v1/chat/completions", headers=headers, timeout=120,
                              json={**body, "messages": [{"role": "user"}], "n": "two"}).status_code
        if kind == "dropped":
            with httpx.stream("POST", f"{server}/v1/chat/completions", headers=headers, timeout=120,
                              json={**body, "stream": True}) as response:
                return next(response.iter_lines()).startswith("data:")
        if kind == "whole":
            return _ask(client, temperature=0).choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in _ask(client, temperature=0, stream=True))

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(request, kinds))
    for kind, outcome in zip(kinds, outcomes):
        expected = {"malformed": 400, "dropped": True}.get(kind, "Let me compute. Done.")
        assert outcome == expected, kind
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["joined"] > 0  # some joined a running batch, and came out right
    assert _ask(client, temperature=0).choices[0].message.content == "Let me compute. Done."


#: SmolLM2's chat template (ChatML with newlines; it takes no tools), with the loss markers training needs.
#: Qwen 2.5's way with tools (signatures in <tools>, calls as <tool_call> JSON, results as <tool_response>),
#: condensed.
QWEN_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n# Tools\\n\\nYou may call functions. Signatures in <tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\nReturn each call as <tool_call>\\n{\"name\": ..., \"arguments\": {...}}\\n</tool_call>"
    "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] or '' -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + call['function']['arguments'] + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def _hub_style_folder(folder: Path, model, tokenizer, template: str, conversations: list) -> Path:
    """``model`` taught ``conversations`` under ``template``, saved with a tokenizer that carries that template, as
    a chat model downloaded from the Hub is."""
    own = copy.deepcopy(tokenizer)
    own.chat_template = template
    torch.manual_seed(0)
    set_generation_defaults(model, own)
    memorize(model, own, conversations, steps=300)
    model.save_pretrained(folder)
    own.save_pretrained(folder)
    return folder


def test_a_llama_family_model_folder_with_its_own_template_is_served_too(tmp_path, tokenizer):
    torch.manual_seed(0)
    folder = _hub_style_folder(tmp_path / "tiny-llama", LlamaForCausalLM(small_llama_config(tokenizer)), tokenizer,
                               CHATML_TEMPLATE, [[{"role": "user", "content": "Hello?"},
                                                 {"role": "assistant", "content": "Hi there."}]])
    with serving(folder) as url:
        llama = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = llama.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hello?"}],
                                              temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in llama.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hello?"}], temperature=0, stream=True))
        with pytest.raises(openai.BadRequestError, match="does not take tools"):
            llama.chat.completions.create(model="tiny-llama", messages=WEATHER_QUESTION, tools=[WEATHER])
    assert reply.choices[0].message.content == streamed == "Hi there." and reply.choices[0].finish_reason == "stop"


def _returns_the_weather_call(folder: Path) -> None:
    """The model of ``folder``, served and asked about the weather in Paris with the weather tool declared, returns
    the call it learnt as ``tool_calls``."""
    with serving(folder) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=folder.name, messages=WEATHER_QUESTION, tools=[WEATHER],
                                               temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]


def test_a_qwen_family_model_returns_tool_calls_in_its_own_format(tmp_path, tokenizer):
    """Qwen's template and call format; the calls are read with the response template transformers keeps for
    the family (the tokenizer has none)."""
    torch.manual_seed(0)
    config = Qwen2Config(**small_llama_config(tokenizer, max_position_embeddings=512).to_dict()
                         | {"model_type": "qwen2"})
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    folder = _hub_style_folder(tmp_path / "tiny-qwen", Qwen2ForCausalLM(config), tokenizer, QWEN_TEMPLATE, [
        {"messages": [*WEATHER_QUESTION, {"role": "assistant", "content": "", "tool_calls": [call]}],
         "tools": [WEATHER]}])
    _returns_the_weather_call(folder)


def test_a_chatml_model_given_the_tool_protocol_returns_tool_calls(tmp_path, tokenizer):
    """A ChatML-style template turned into ChatForge's tool-aware one (``chatforge model add-tools``): the calls are
    read after the ChatML generation prompt."""
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    folder = _hub_style_folder(tmp_path / "tiny-chatml", LlamaForCausalLM(small_llama_config(tokenizer)), tokenizer,
                               tool_chat_template(chatml), [{"messages": WEATHER_ANSWERED[:2], "tools": [WEATHER]}])
    _returns_the_weather_call(folder)


def test_a_base_model_without_a_chat_template_completes_and_refuses_chat_clearly(tmp_path, tokenizer, model):
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    model.save_pretrained(tmp_path / "tiny-base")
    base.save_pretrained(tmp_path / "tiny-base")
    with serving(tmp_path / "tiny-base") as url:
        chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-base", "messages": [
            {"role": "user", "content": "hi"}]})
        tools = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-base", "messages": WEATHER_QUESTION,
                                                               "tools": [WEATHER]})
        completion = httpx.post(f"{url}/v1/completions", json={"model": "tiny-base", "prompt": "The river",
                                                               "max_tokens": 4, "temperature": 0})
    assert chat.status_code == 400 and "/v1/completions" in chat.json()["error"]["message"]
    assert tools.status_code == 400 and "does not take tools" in tools.json()["error"]["message"]
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's ``chromium``) driven by Playwright."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium (CI's .ci/run installs it)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def _ask_on_page(page, question: str) -> None:
    """Type ``question`` and wait until its reply has finished streaming (the send button is back)."""
    from playwright.sync_api import expect

    replies = page.locator(".assistant").count()
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    page.locator(".assistant").nth(replies).wait_for()
    expect(page.locator("#send")).to_be_enabled(timeout=60_000)


def test_the_chat_page_streams_replies_shows_tool_calls_and_keeps_markup_inert(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.click("#settings summary")
    page.fill("#api-key", KEY)
    page.fill("#temperature", "0")
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const reply = document.querySelector('.assistant');
            if (reply) window.lengths.push(reply.textContent.length);
        }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
    }""")
    _ask_on_page(page, QUESTION)
    lengths = page.evaluate("window.lengths")
    # the reply grew piece by piece (under load the browser may take several streamed pieces in one update)
    assert len(set(lengths)) > 3 and lengths == sorted(lengths)
    assert page.inner_text(".tool-call") == "calculator call: 123 * 456"
    assert page.inner_text(".tool-output") == "calculator output: 56088"
    assert page.inner_text(".assistant").startswith("Let me compute.")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"))
    page.click("#new-chat")  # the model learned the next question without a conversation before it
    assert page.locator(".message").count() == 0
    _ask_on_page(page, MARKUP_QUESTION)
    reply = page.locator(".assistant")
    assert reply.locator("strong").inner_text() == "Bold" and reply.locator("pre code").inner_text() == "x = 1\n"
    assert page.title() == "chatforge" and reply.locator("script, img[onerror]").count() == 0


def test_a_call_in_plain_text_becomes_the_argument_of_a_one_parameter_tool(tokenizer):
    """ChatForge's own tools take one text argument; declared as a one-parameter tool, the call's text becomes
    that parameter's value, so that ``arguments`` is always a JSON object."""
    calculator = {"type": "function", "function": {"name": "calculator", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}}}}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tools=[calculator],
                                           tokenize=False, add_generation_prompt=True)
    reader = ToolCallReader(RESPONSE_TEMPLATE, prompt, [calculator])
    pieces = [*reader.feed("Let me compute. <|tool_call_start|>calcul"),
              *reader.feed("ator\n123 * 456<|tool_call_end|>"), *reader.close()]
    assert "".join(p for p in pieces if isinstance(p, str)) == "Let me compute. "
    [call] = [p for p in pieces if not isinstance(p, str)]
    assert (call.name, json.loads(call.arguments)) == ("calculator", {"expression": "123 * 456"})
    cut_off = ToolCallReader(RESPONSE_TEMPLATE, prompt, [calculator])
    assert [*cut_off.feed("<|tool_call_start|>calculator\n123 *"), *cut_off.close()] == ["123 *"]
    assert cut_off.calls == 0
