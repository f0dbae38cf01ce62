"""Prompts that get useful work out of a base model: few-shot patterns and the "assistant by prompting"
document (a conversation transcript the model continues)."""

from collections.abc import Sequence

ASSISTANT_PREAMBLE = (
    "The following is a conversation between a human and a helpful, knowledgeable AI assistant. "
    "The assistant answers clearly and says when it does not know something.\n\n"
    "Human: What is the capital of France?\n"
    "Assistant: The capital of France is Paris.\n\n"
    "Human: Can you name a primary color?\n"
    "Assistant: Red is a primary color; blue and yellow are the other two.\n\n"
)


def few_shot_prompt(examples: Sequence[tuple[str, str]], query: str, input_label: str = "Input",
                    output_label: str = "Output") -> str:
    """``examples`` as ``Input: … / Output: …`` blocks, then the query with an open output for the model."""
    blocks = [f"{input_label}: {source}\n{output_label}: {target}\n" for source, target in examples]
    return "\n".join(blocks + [f"{input_label}: {query}\n{output_label}:"])


def assistant_prompt(question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """A transcript whose next line is the assistant's answer to ``question``; stop generation at
    ``"\\nHuman:"`` to keep only that answer."""
    turns = "".join(f"Human: {human}\nAssistant: {reply}\n\n" for human, reply in history)
    return f"{ASSISTANT_PREAMBLE}{turns}Human: {question}\nAssistant:"


#: Where an "assistant by prompting" answer ends.
ASSISTANT_STOP = ("\nHuman:",)
