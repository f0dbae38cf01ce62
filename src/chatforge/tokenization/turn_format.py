"""How a ChatML-style chat template (SmolLM2's, Qwen's, ChatForge's) writes a turn, read off the template itself,
and ChatForge's tool-aware template written the same way."""

import re
from dataclasses import dataclass

from ..errors import InvalidValue
from .tokenization_chatforge import IM_END, IM_START, chat_template

#: Conversations on which a derived template must render exactly as the original does.
_CHECKED = (
    [{"role": "user", "content": "Hi."}],
    [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
)


@dataclass(frozen=True)
class TurnFormat:
    """A turn is ``<|im_start|>role{separator}content<|im_end|>{after_end}``; conversations without a system turn
    get ``default_system`` (None: none)."""

    separator: str
    after_end: str
    default_system: str | None


def turn_format(tokenizer) -> TurnFormat:
    """The :class:`TurnFormat` of ``tokenizer``'s chat template; :class:`~chatforge.errors.InvalidValue` where the
    template does not write ChatML-style turns."""
    if tokenizer.chat_template is None:
        raise InvalidValue(f"{tokenizer.name_or_path}: the tokenizer has no chat template")
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                              {"role": "assistant", "content": "A"}], tokenize=False)
    start, end = re.escape(IM_START), re.escape(IM_END)
    match = re.fullmatch(f"{start}system(.*?)S{end}(.*?){start}user\\1U{end}\\2{start}assistant\\1A{end}\\2",
                         rendered, re.DOTALL)
    if match is None:
        raise InvalidValue(f"{tokenizer.name_or_path}: its chat template does not write {IM_START}role ... {IM_END} "
                           f"turns (it renders {rendered!r}); give a training template with chat_template_path")
    separator, after_end = match.groups()
    alone = tokenizer.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    default = re.match(f"{start}system{re.escape(separator)}(.*?){end}", alone, re.DOTALL)
    return TurnFormat(separator, after_end, default.group(1) if default else None)


def tool_chat_template(tokenizer) -> str:
    """ChatForge's chat template (tools, tool calls, generation markers) in the turn format of ``tokenizer``'s own
    template; checked to render conversations without tools exactly as the original does."""
    form = turn_format(tokenizer)
    template = chat_template(form.separator, form.after_end, form.default_system)
    for messages in _CHECKED:
        for prompt in (False, True):
            ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                 chat_template=template)
            theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            if ours != theirs:
                raise InvalidValue(f"{tokenizer.name_or_path}: its chat template renders {theirs!r}, which a "
                                   f"ChatML-style template cannot reproduce ({ours!r}); give a training template "
                                   "with chat_template_path")
    return template


__all__ = ["TurnFormat", "tool_chat_template", "turn_format"]
