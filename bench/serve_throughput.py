"""Serving throughput of ``chatforge serve`` against ``transformers serve`` (continuous batching), same model,
same load, same run.

For 1, 4 and 16 concurrent streaming clients (the official ``openai`` client), each server answers the same
requests (``--requests`` replies of ``--max-tokens`` tokens, sampled at temperature 1 with fixed seeds), in
``--rounds`` measurements that alternate between the two servers (both stay up); prints the median aggregate
generated tokens/s, time to first token (p50/p95 over every request) and the ratio chatforge / transformers at
each concurrency, and chatforge's scaling (tokens/s at 16 clients over 1 client).

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


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` streamed replies (rounded up to a multiple of ``clients``) sent by ``clients`` threads."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    seeds = range(1, clients * -(-requests // clients) + 1)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda seed: one_request(client, model, seed, max_tokens), seeds))
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": sum(tokens for _, tokens in results) / elapsed, "ttfts": [first for first, _ in results]}


def summary(rounds: list[dict]) -> dict:
    """The median tokens/s of the rounds, and time-to-first-token percentiles over all their requests."""
    firsts = sorted(first for measured in rounds for first in measured["ttfts"])
    return {"tokens_per_s": statistics.median(measured["tokens_per_s"] for measured in rounds),
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
    parser.add_argument("--requests", type=int, default=32, help="replies per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per server and concurrency, "
                                                              "alternating between the servers")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    counts = list(map(int, args.clients.split(",")))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.model) if args.model else fresh_model(Path(scratch) / "bench-model", args.preset)
        servers = {
            "chatforge": lambda port: [sys.executable, "-m", "chatforge.cli", "serve", str(folder), "--port",
                                       str(port), "--served-model-name", str(folder), "--device", "cpu"],
            "transformers": lambda port: [sys.executable, "-c", TRANSFORMERS_SERVE, str(folder), "--port", str(port),
                                          "--device", "cpu", "--continuous-batching"],
        }
        urls, processes = {}, []
        try:
            for name, command in servers.items():
                port = free_port()
                processes.append(start(command(port), port))
                urls[name] = f"http://127.0.0.1:{port}"
                warm_up = openai.OpenAI(base_url=f"{urls[name]}/v1", api_key="unused", max_retries=0, timeout=600)
                one_request(warm_up, str(folder), 0, 4)  # transformers serve loads the model on first use
            rounds = {(name, clients): [] for name in servers for clients in counts}
            for clients in counts:
                for _ in range(args.rounds):  # alternating, so that both servers see the same machine
                    for name in servers:
                        rounds[name, clients].append(load(urls[name], str(folder), clients, args.requests,
                                                          args.max_tokens))
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)
    figures = {key: summary(measured) for key, measured in rounds.items()}
    print(f"{'clients':>7} {'server':<13} {'tokens/s':>9} {'TTFT p50 s':>11} {'TTFT p95 s':>11}")
    for clients in counts:
        for name in servers:
            f = figures[name, clients]
            print(f"{clients:>7} {name:<13} {f['tokens_per_s']:>9.1f} {f['ttft_p50']:>11.3f} {f['ttft_p95']:>11.3f}")
        ratio = figures["chatforge", clients]["tokens_per_s"] / figures["transformers", clients]["tokens_per_s"]
        each = [ours["tokens_per_s"] / theirs["tokens_per_s"]
                for ours, theirs in zip(rounds["chatforge", clients], rounds["transformers", clients])]
        print(f"{clients:>7} {'ratio':<13} {ratio:>9.2f}x  (chatforge / transformers serve; rounds: "
              f"{', '.join(f'{r:.2f}x' for r in each)})")
    scaling = figures["chatforge", counts[-1]]["tokens_per_s"] / figures["chatforge", counts[0]]["tokens_per_s"]
    print(f"chatforge tokens/s at {counts[-1]} clients / at {counts[0]}: {scaling:.2f}x")


if __name__ == "__main__":
    main()
