"""One exception type for mistakes a user can fix; the CLI prints its message without a traceback."""


class UnlearnError(Exception):
    """Bad input or missing resource, with a message that says what to pass or set instead."""
