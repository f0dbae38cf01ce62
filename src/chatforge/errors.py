"""Errors the user can put right — a missing or malformed input, a setting that cannot work. The command line
prints their message on one line; any other exception is a bug and keeps its traceback."""


class UserError(Exception):
    """Something the user can put right; the message says what and where."""


class InvalidValue(UserError, ValueError):
    """A setting, or a value in the user's data, that cannot work."""


class NotFound(UserError, FileNotFoundError):
    """A file, folder or program the command needs is not there."""


class MissingField(UserError, KeyError):
    """A record of the user's data lacks a field."""

    def __str__(self) -> str:  # the message, without KeyError's quotes
        return str(self.args[0]) if self.args else ""


__all__ = ["InvalidValue", "MissingField", "NotFound", "UserError"]
