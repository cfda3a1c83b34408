"""The event bus: NATS connection, subject and stream names, durable publish and consume.

* :mod:`mesh.bus.connection` — ``connect`` with chatmesh's defaults, the JetStream API call;
* :mod:`mesh.bus.subjects` — every subject and stream name (the bus's vocabulary);
* :mod:`mesh.bus.streams` — stream definitions from the topology, ``ensure_stream``;
* :mod:`mesh.bus.eventbus` — ``publish_event`` (acked, de-duplicated) and ``PullConsumer``.
"""
