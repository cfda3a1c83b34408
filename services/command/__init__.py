"""Command Service: the primary region's single writer of channel logs."""
