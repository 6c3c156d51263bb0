"""User errors (the CLI prints the message as one line and exits 2) and a stop on a signal."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (libraries append C++ traces), at most `limit` characters;
    its class name when the message is empty."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


class UserError(Exception):
    """Bad input from the user (config, data, cache); the message says what is wrong and how to fix it."""


class Stopped(Exception):
    """A run stopped cleanly on a signal (its state saved); the CLI prints the message and exits with `code`
    (128 + the signal's number, as a shell reports a process the signal ended)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
