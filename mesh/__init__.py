"""chatmesh plumbing: the harness, interceptors, stores and the command line."""
