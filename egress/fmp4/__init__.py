"""Fragmented MP4 (CMAF) output: the sans-IO fragmenter shared by HTTP/WS-fMP4, HLS and DASH."""
