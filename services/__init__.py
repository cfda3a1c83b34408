"""chatmesh services, one package each (same shape: __main__, server, domain, config)."""
