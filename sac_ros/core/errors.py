"""One exception type for problems a user can fix (bad input, bad config)."""


class SacError(Exception):
    """A user-facing error: the message is printed as one line, without a traceback."""
