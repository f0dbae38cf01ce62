"""Serving throughput of ``chatforge serve`` against ``transformers serve`` (continuous batching), same model,
same load, same run.

For 1, 4 and 16 concurrent streaming clients (the official ``openai`` client), each server answers the same
requests (``--max-tokens`` tokens each, sampled at temperature 1 with fixed seeds); prints aggregate generated
tokens/s, time to first token (p50/p95) and the ratio chatforge / transformers at each concurrency, and
chatforge's scaling (tokens/s at 16 clients over 1 client).

    python bench/serve_throughput.py                            # a fresh tiny-preset model
    python bench/serve_throughput.py --model runs/tiny/export/sft
"""

import argparse
import concurrent.futures
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

#: Runs ``transformers serve``, with the chatforge model class where its loader looks classes up by name.
TRANSFORMERS_SERVE = """
import sys
from chatforge.modeling import ChatForgeForCausalLM
import transformers.cli.serving.model_manager as manager
setattr(manager.transformers, "ChatForgeForCausalLM", ChatForgeForCausalLM)
from transformers.cli.transformers import main
sys.argv = ["transformers", "serve", *sys.argv[1:]]
main()
"""


def fresh_model(folder: Path, preset: str) -> Path:
    """A randomly initialised model of ``preset`` with a tokenizer trained on the embedded text."""
    import torch

    from chatforge.data import EMBEDDED_WIKIPEDIA, iter_documents
    from chatforge.modeling import ChatForgeForCausalLM, config_for_tokenizer, set_generation_defaults
    from chatforge.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iter_documents([str(EMBEDDED_WIKIPEDIA)]), vocab_size=4096, show_progress=False)
    torch.manual_seed(0)
    model = ChatForgeForCausalLM(config_for_tokenizer(tokenizer, preset))
    set_generation_defaults(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def start(command: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not come up on port {port}")


def one_request(client: openai.OpenAI, model: str, seed: int, max_tokens: int) -> tuple[float, int]:
    """Stream one reply: seconds to its first text, and the tokens generated."""
    started, first, tokens = time.perf_counter(), None, 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me a story, number {seed}."}], stream=True,
        max_tokens=max_tokens, temperature=1.0, seed=seed, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - started), tokens


def load(url: str, model: str, clients: int, requests_per_client: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    one_request(client, model, 0, 4)  # warm-up (transformers serve loads the model on first use)
    seeds = range(1, clients * requests_per_client + 1)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda seed: one_request(client, model, seed, max_tokens), seeds))
    elapsed = time.perf_counter() - started
    firsts = sorted(first for first, _ in results)
    return {"tokens_per_s": sum(tokens for _, tokens in results) / elapsed,
            "ttft_p50": statistics.median(firsts), "ttft_p95": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: a fresh model of --preset)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.model) if args.model else fresh_model(Path(scratch) / "bench-model", args.preset)
        servers = {
            "chatforge": lambda port: [sys.executable, "-m", "chatforge.cli", "serve", str(folder), "--port",
                                       str(port), "--served-model-name", str(folder), "--device", "cpu"],
            "transformers": lambda port: [sys.executable, "-c", TRANSFORMERS_SERVE, str(folder), "--port", str(port),
                                          "--device", "cpu", "--continuous-batching"],
        }
        figures = {}
        for name, command in servers.items():
            port = free_port()
            process = start(command(port), port)
            try:
                for clients in map(int, args.clients.split(",")):
                    figures[name, clients] = load(f"http://127.0.0.1:{port}", str(folder), clients,
                                                  args.requests_per_client, args.max_tokens)
            finally:
                process.terminate()
                process.wait(60)
    print(f"{'clients':>7} {'server':<13} {'tokens/s':>9} {'TTFT p50 s':>11} {'TTFT p95 s':>11}")
    for clients in map(int, args.clients.split(",")):
        for name in servers:
            f = figures[name, clients]
            print(f"{clients:>7} {name:<13} {f['tokens_per_s']:>9.1f} {f['ttft_p50']:>11.3f} {f['ttft_p95']:>11.3f}")
        ratio = figures["chatforge", clients]["tokens_per_s"] / figures["transformers", clients]["tokens_per_s"]
        print(f"{clients:>7} {'ratio':<13} {ratio:>9.2f}x  (chatforge / transformers serve)")
    counts = list(map(int, args.clients.split(",")))
    scaling = figures["chatforge", counts[-1]]["tokens_per_s"] / figures["chatforge", counts[0]]["tokens_per_s"]
    print(f"chatforge tokens/s at {counts[-1]} clients / at {counts[0]}: {scaling:.2f}x")


if __name__ == "__main__":
    main()
