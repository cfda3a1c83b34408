"""Fan-Out Service: the global routing table and per-instance delivery (primary region)."""
