"""A terminal view of how text becomes tokens, like the tiktokenizer page: coloured chunks and ids."""

from transformers import PreTrainedTokenizerBase

# Background colours (ANSI 256-colour palette) cycled over consecutive tokens.
_BACKGROUNDS = (153, 223, 194, 217, 189, 229, 159, 225)


def token_pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[tuple[int, str]]:
    """(token id, the text it adds) for each token of ``text``.

    A token holding only the first bytes of a multi-byte character shows as "\ufffd" (as on the
    tiktokenizer page) and the token that completes the character carries the whole character.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:end], clean_up_tokenization_spaces=False)
        if decoded.endswith("\ufffd") and not text.startswith(decoded):
            pieces.append((ids[end - 1], "\ufffd"))
            continue
        pieces.append((ids[end - 1], decoded[len(previous):]))
        previous = decoded
    return pieces


def render_tokens(tokenizer: PreTrainedTokenizerBase, text: str, color: bool = True) -> str:
    """Coloured token chunks, then the id list and the token count."""
    pieces = token_pieces(tokenizer, text)
    chunks = []
    for index, (_, piece) in enumerate(pieces):
        shown = piece.replace("\n", "\\n\n").replace("\t", "\\t")
        if color:
            chunks.append(f"\x1b[48;5;{_BACKGROUNDS[index % len(_BACKGROUNDS)]}m\x1b[30m{shown}\x1b[0m")
        else:
            chunks.append(f"[{shown}]")
    ids = [token_id for token_id, _ in pieces]
    return "\n".join(
        [
            "".join(chunks),
            "",
            f"ids: {ids}",
            f"{len(ids)} tokens, {len(text)} characters, {len(text.encode('utf-8'))} bytes",
        ]
    )
