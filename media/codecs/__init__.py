"""Codec configuration records (AVC, AAC) parsed into what muxers and status need."""
