"""The one exception type for user errors: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (config, data, cache); the message says what is wrong and how to fix it."""
