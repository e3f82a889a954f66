"""Egress: live FLV muxing and fan-out, the starlette app served by hypercorn."""
