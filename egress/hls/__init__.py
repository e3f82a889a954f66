"""HLS: playlists for the DVR worker's CMAF segments, and blocking playlist reload."""
