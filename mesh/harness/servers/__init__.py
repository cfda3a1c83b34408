"""Runners for servers the harness fetches or builds: Cassandra (Maven jars), FerretDB, Go tools."""
