"""The one error type raised by the codec configuration parsers."""

from __future__ import annotations


class CodecError(ValueError):
    """A codec configuration record or parameter set is malformed or unsupported."""
