"""Pure format code shared by every process: AMF0, FLV, codec configs. No I/O."""
