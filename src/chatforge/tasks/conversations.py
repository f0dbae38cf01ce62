"""Checks on chat conversations before training: bad records are an error or a counted skip, never
silently truncated."""

from ..errors import InvalidValue
from ..tokenization.tokenization_chatforge import CHAT_ROLES

ON_INVALID = ("skip", "error")  # what to do with a bad conversation


class ConversationError(InvalidValue):
    """A conversation that cannot be trained on; the message names the record, ``reason`` the kind of fault."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


def check_messages(messages, where: str) -> None:
    """Raise :class:`ConversationError` unless ``messages`` is a well-formed conversation: known roles,
    non-empty string content, an optional system message first, user/tool and assistant turns
    alternating from a user turn, and at least one assistant reply."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError(where, "no messages", "'messages' must be a non-empty list")
    expected_next = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ConversationError(where, "missing role or content", f"message {index}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise ConversationError(where, "unknown role", f"message {index}: {role!r}; expected one of {CHAT_ROLES}")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError(where, "empty content", f"message {index}, {role}")
        if role == "system":
            if index != 0:
                raise ConversationError(where, "wrong role order", f"message {index}: system may only come first")
            continue
        speaker = "assistant" if role == "assistant" else "user"
        if expected_next is None and speaker == "assistant":
            raise ConversationError(where, "wrong role order", f"message {index}: the first turn must be the user's")
        if expected_next is not None and speaker != expected_next:
            raise ConversationError(where, "wrong role order", f"message {index}: two {speaker} turns in a row")
        expected_next = "user" if speaker == "assistant" else "assistant"
    if expected_next != "user":
        raise ConversationError(where, "no final assistant reply")


def check_conversation(messages, where: str, tokenizer=None, max_length: int | None = None) -> None:
    """:func:`check_messages`, and with a tokenizer also that the rendered conversation fits ``max_length``."""
    check_messages(messages, where)
    if tokenizer is not None and max_length is not None:
        length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        if length > max_length:
            raise ConversationError(where, "too long", f"{length} tokens > max_length={max_length}; "
                                    "truncating would cut the assistant's reply")
