"""chatmesh's Python packages, one per concern; imports only point down.

Runtime (what the services import): :mod:`mesh.core`, :mod:`mesh.topology`,
:mod:`mesh.bus`, :mod:`mesh.rpc`, :mod:`mesh.stores`. Above them:
:mod:`mesh.deploy` (config generators), :mod:`mesh.harness` (runs a mesh
locally) and :mod:`mesh.cli`. ``docs/ARCHITECTURE.md`` is the map.
"""
