"""Token ids turned into text as they are generated, one complete piece at a time."""


class IncrementalText:
    """The text of a growing run of token ids: :meth:`add` returns what each new token completes (nothing while a
    multi-byte character is unfinished), :meth:`flush` what is left once the run is over."""

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        piece, self.text = text[len(self.text):], text
        return piece


__all__ = ["IncrementalText"]
