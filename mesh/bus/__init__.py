"""The event bus: NATS connection, subject and stream names, the bus interfaces, consuming.

* :mod:`mesh.bus.connection` — ``connect`` with chatmesh's defaults;
* :mod:`mesh.bus.subjects` — every subject and stream name (the bus's vocabulary);
* :mod:`mesh.bus.streams` — stream definitions from the topology, ``ensure_stream``;
* :mod:`mesh.bus.interfaces` — the Protocols domain code takes: ``Bus`` (core NATS),
  ``EventPublisher`` (acked, de-duplicated publishes), ``JetStream`` (direct reads,
  durable consumers);
* :mod:`mesh.bus.natsbus` — ``NatsBus``, those Protocols over one nats-py client;
* :mod:`mesh.bus.eventbus` — ``PullConsumer`` (in order, no gaps, no repeats).
"""
