"""rtmpmate's benchmark suite: `python -m bench` (see docs/benchmarks.md).

One load process (trio) publishes generated test media in real time and opens many players
over RTMP, HTTP-FLV and WS-FLV, against rtmpmate and, when installed, nginx-rtmp in the same
invocation; /proc gives the servers' CPU time and memory.
"""
