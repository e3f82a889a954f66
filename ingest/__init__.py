"""Ingest: RTMP (and later RTSP) protocol cores and their trio servers."""
