"""RTMP: handshake, chunk stream, messages and the session state machine (pure), server (trio)."""
