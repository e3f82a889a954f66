"""Chat rooms beside every stream (a later issue)."""
