"""RTSP over TCP: sans-IO message, SDP and RTP cores (the trio server comes with them)."""
