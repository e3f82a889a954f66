"""ISO base media file format (ISO/IEC 14496-12) writing: boxes, init segments, fragments."""
