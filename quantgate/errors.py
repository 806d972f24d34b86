"""User-facing errors: one line that says what is wrong, where, and what to do."""


MAX_MESSAGE = 600      # characters: an error is one readable line, whatever the input held


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 20] + f" ... ({len(line):,} chars)"


class QuantgateError(Exception):
    """An error caused by the user's input, reported without a traceback by the CLI."""

    def __init__(self, message: str = ""):
        super().__init__(bounded(message))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise QuantgateError(message)
