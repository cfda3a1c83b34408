"""Regional edge: one public port per region for gRPC, gRPC-Web and Connect clients."""
