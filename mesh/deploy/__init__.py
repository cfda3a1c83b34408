"""Deployment generators: NATS server configs, Envoy bootstraps, docker-compose (pure).

They turn a :class:`~mesh.topology.Topology` into files; the harness renders
the same generators with local ports and paths, ``docker-compose.yml`` with
container ones. Nothing here starts a process.
"""
