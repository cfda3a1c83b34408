"""Workers: persist the event stream into the region's history (and metadata) stores."""
