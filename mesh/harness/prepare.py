"""Fetching and building the servers a mesh runs, once per machine, with visible progress.

The embedded default (``chatmesh up``, ``make up``) needs one built program: Toxiproxy,
for the WAN links. The production stores (``chatmesh up --stores production``,
``make test``, ``make bench``) add FerretDB (built from the Go module proxy, about a
minute on two cores) and Cassandra's jars (Maven Central). Everything lands in
:func:`mesh.harness.paths.cache_dir` and is reused by every checkout.

:func:`prepare` runs the steps that are not cached yet, one line when a step starts
(what, from where), one line every few seconds with the elapsed time while it runs,
and one line when it is done, so a first start is never two silent minutes. The
builders themselves take file locks, so two callers at once build once.

Example:
    Command line (what ``make toxiproxy`` and ``make tools`` run)::

        python -m mesh.harness.prepare toxiproxy ferretdb cassandra

    From Python::

        >>> from mesh.harness.prepare import steps_for
        >>> steps_for("embedded")
        ['toxiproxy']
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.core.versions import CASSANDRA_VERSION, FERRETDB_VERSION, TOXIPROXY_VERSION
from mesh.harness.servers.cassandra import CassandraError, cached_jars, ensure_jars
from mesh.harness.servers.ferretdb import FerretDBError, cached_ferretdb, ensure_ferretdb
from mesh.harness.servers.gotools import TOXIPROXY, GoToolError

__all__ = ["STEPS", "PrepareError", "Step", "prepare", "steps_for"]


class PrepareError(RuntimeError):
    """A step failed; the message names the step and carries the tool's own error."""


@dataclass(frozen=True)
class Step:
    """One thing to fetch or build."""

    name: str
    """Short name on the command line (``toxiproxy``)."""
    what: str
    """What is made and from where, for the progress line."""
    cached: Callable[[], Path | None]
    """The cached result, or None when the step has to run."""
    run: Callable[[], Path]
    """Makes the result (blocking) and returns its path."""


def _cached_toxiproxy() -> Path | None:
    path = TOXIPROXY.cached()
    return path if path.exists() else None


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step(
            "toxiproxy",
            f"Toxiproxy {TOXIPROXY_VERSION} (go install from the Go module proxy)",
            _cached_toxiproxy,
            TOXIPROXY.ensure,
        ),
        Step(
            "ferretdb",
            f"FerretDB {FERRETDB_VERSION} (go build from the Go module proxy, about a minute)",
            cached_ferretdb,
            ensure_ferretdb,
        ),
        Step(
            "cassandra",
            f"Cassandra {CASSANDRA_VERSION} jars (Maven Central)",
            cached_jars,
            ensure_jars,
        ),
    )
}
"""Every step, by name, in the order :func:`prepare` runs them."""


def steps_for(stores_backend: str) -> list[str]:
    """Names the steps a mesh with ``stores_backend`` needs before it starts.

    Args:
        stores_backend: ``embedded`` or ``production`` (``topology.stores.backend``).
    """
    if stores_backend == "production":
        return ["toxiproxy", "ferretdb", "cassandra"]
    return ["toxiproxy"]


def prepare(
    names: Sequence[str], *, echo: Callable[[str], None] = print, tick: float = 10.0
) -> dict[str, Path]:
    """Runs the named steps that are not cached yet, reporting progress through ``echo``.

    Args:
        names: Keys of :data:`STEPS`.
        echo: Receives one line at a time (``print``, ``typer.echo``).
        tick: Seconds between "still running" lines.

    Returns:
        Step name -> path of its result.

    Raises:
        KeyError: An unknown step name.
        PrepareError: A step failed.
    """
    steps = [STEPS[name] for name in names]
    todo = [step for step in steps if step.cached() is None]
    results: dict[str, Path] = {}
    for number, step in enumerate(todo, start=1):
        echo(f"[{number}/{len(todo)}] {step.what}: one time per machine ...")
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(step.run)
            while True:
                try:
                    results[step.name] = future.result(timeout=tick)
                    break
                except concurrent.futures.TimeoutError:
                    echo(f"      {step.name}: {time.monotonic() - started:.0f} s ...")
                except (GoToolError, FerretDBError, CassandraError) as exc:
                    raise PrepareError(f"{step.name}: {exc}") from exc
        echo(
            f"      {step.name}: done in {time.monotonic() - started:.1f} s ({results[step.name]})"
        )
    for step in steps:
        if step.name not in results:
            cached = step.cached()
            assert cached is not None
            results[step.name] = cached
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mesh.harness.prepare STEP...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh.harness.prepare",
        description="Fetch or build the servers a mesh runs (cached once per machine).",
    )
    parser.add_argument("steps", nargs="+", choices=list(STEPS))
    args = parser.parse_args(argv)
    try:
        results = prepare(args.steps, echo=lambda line: print(line, flush=True))
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in args.steps:
        print(f"{name}: {results[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
