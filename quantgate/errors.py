"""User-facing errors: one line that says what is wrong, where, and what to do."""


class QuantgateError(Exception):
    """An error caused by the user's input, reported without a traceback by the CLI."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise QuantgateError(message)
