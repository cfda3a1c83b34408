"""The local harness: starts, supervises and stops a whole mesh on one machine.

``chatmesh up``, the pytest fixtures and the benchmark all run
:class:`~mesh.harness.supervisor.Mesh`. Server runners that build or fetch
binaries (Cassandra, FerretDB, Go tools) live in :mod:`mesh.harness.servers`.
"""
