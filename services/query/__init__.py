"""Query Service: history, channels and presence from the region's replicas."""
