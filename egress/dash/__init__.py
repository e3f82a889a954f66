"""MPEG-DASH: the manifest of the DVR worker's CMAF presentations."""
