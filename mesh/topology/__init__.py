"""The topology: the one description of a deployment's regions and WAN (pure data).

Everything region-shaped (NATS configs, link proxies, Valkey replicas, Envoy
bootstraps, docker-compose) is generated from a :class:`Topology`; built-in
topologies live in ``builtin/``. ``docs/topology.md`` documents every key.
"""

from mesh.topology.model import (
    BUILTIN_DIR,
    WRITES_EVERY_REGION,
    WRITES_MODES,
    WRITES_PRIMARY,
    Limits,
    Link,
    NatsSettings,
    Region,
    StoreSettings,
    Topology,
    TopologyError,
    builtin_names,
    load,
    parse,
)

__all__ = [
    "BUILTIN_DIR",
    "WRITES_EVERY_REGION",
    "WRITES_MODES",
    "WRITES_PRIMARY",
    "Limits",
    "Link",
    "NatsSettings",
    "Region",
    "StoreSettings",
    "Topology",
    "TopologyError",
    "builtin_names",
    "load",
    "parse",
]
