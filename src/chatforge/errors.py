"""Errors the user can put right — a missing or malformed input, a setting that cannot work. The command line
prints their message on one line; any other exception is a bug and keeps its traceback."""


class UserError(Exception):
    """Something the user can put right; the message says what and where."""


class InvalidValue(UserError, ValueError):
    """A setting, or a value in the user's data, that cannot work."""


class NotFound(UserError, FileNotFoundError):
    """A file, folder or program the command needs is not there."""


class MissingInput(NotFound):
    """A stage's input is not there: the setting ``field`` names ``path``, where a ``what`` should be; ``make`` is
    the command that makes it, where one is known (the command line fills it in from the recipes)."""

    def __init__(self, field: str, path: str, what: str, make: str | None = None):
        super().__init__(field, path, what, make)
        self.field, self.path, self.what, self.make = field, str(path), what, make

    def __str__(self) -> str:
        how = f"make it with `{self.make}`" if self.make else "make it first, or point the setting at one"
        return f"{self.field}={self.path}: no {self.what} there; {how}"


class MissingField(UserError, KeyError):
    """A record of the user's data lacks a field."""

    def __str__(self) -> str:  # the message, without KeyError's quotes
        return str(self.args[0]) if self.args else ""


__all__ = ["InvalidValue", "MissingField", "MissingInput", "NotFound", "UserError"]
