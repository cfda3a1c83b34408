"""The fault suite chatmesh owns (``make chaos``; its short version runs in ``make test``).

A workload of retrying senders and resuming subscribers in every region, entering
through the regional edges with :mod:`mesh.client`, runs while a schedule injects
one fault at a time (kill -9 of every service kind and every NATS node, WAN
partitions, gateway and command-link cuts, graceful restarts) and heals it, with
traffic on throughout. A checker then compares the acknowledged sends, every
region's history and every subscriber's stream, and reports per fault: time to
recover, sends failed, lost, duplicated, gaps, out-of-order and undelivered without
notice. See docs/chaos.md.

Modules: :mod:`~tools.chaos.schedule` (the steps, as data), :mod:`~tools.chaos.faults`
(running a step on a mesh), :mod:`~tools.chaos.workload` (senders, subscribers, the
recorder), :mod:`~tools.chaos.recording` (what was recorded), :mod:`~tools.chaos.checker`
(the rules, pure), :mod:`~tools.chaos.report` (the table), :mod:`~tools.chaos.runner`
(one run), :mod:`~tools.chaos.cli` (``python -m tools.chaos``).

Example:
    >>> from tools.chaos.cli import parse_args
    >>> parse_args(["--topology", "ha", "--schedule", "short"]).schedule
    'short'
"""
