"""Recorders: what the DVR worker writes to disk (DVR_FMP4 presentations, DVR_FLV files)."""
