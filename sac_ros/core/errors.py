"""One exception type for problems a user can fix (bad input, bad config)."""


class SacError(Exception):
    """A user-facing error: the message is printed as one line, without a traceback."""


class PacketError(SacError):
    """A packet that must be dropped; ``reason`` is the drop counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
