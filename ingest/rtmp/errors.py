"""The RTMP core's single error type (any other exception escaping the core is a bug)."""


class RtmpProtocolError(Exception):
    """The peer broke the RTMP protocol; the shell closes this one connection and logs once."""
