"""Run Apache Cassandra 5.0 nodes from the jars Maven Central publishes.

There is no Cassandra tarball here: :func:`ensure_jars` resolves
``org.apache.cassandra:cassandra-all`` and its runtime dependencies with Maven into
``cache_dir()/cassandra-<version>/lib`` once per machine, and :class:`CassandraNode`
launches ``org.apache.cassandra.service.CassandraDaemon`` on that classpath with the
JVM flags the upstream start scripts would have added (``conf/jvm-server.options``,
``conf/jvm17-server.options``, the jamm agent from ``cassandra-env.sh``).

A node has two loopback addresses: ``listen_address`` (where it really listens for
peers and CQL clients) and ``broadcast_address`` (what it gossips, so what every peer
dials). A link proxy (Toxiproxy) listens on ``broadcast_address:storage_port`` and
forwards to ``listen_address:storage_port``; every message *towards* the node then
crosses the proxy, so a latency toxic delays it and disabling the proxy partitions
the node. :func:`plan_cluster` lays out one node per region this way.

Two consequences for whoever wires the proxies (measured with Toxiproxy 2.5):

* Cassandra's internode connections are one-way: a node sends only on connections
  it opened, and the acceptor answers on its own. A latency toxic must therefore be
  on the proxy's ``upstream`` stream; a ``downstream`` toxic delays nothing.
* Peers all dial the same broadcast address, so latency is per destination node,
  not per region pair. With three regions, pair round trips ``ab, ac, bc`` are
  reproduced exactly by one-way latencies ``la = (ab + ac - bc) / 2`` (and so on),
  as long as the triangle inequality holds.

Example::

    import asyncio
    from pathlib import Path
    from mesh.harness.servers.cassandra import CassandraNode, plan_cluster

    async def main() -> None:
        specs = plan_cluster(["us-east", "eu"], Path("/tmp/cass"))
        # ...start one proxy per spec: spec.proxy_listen -> spec.proxy_upstream...
        nodes = [CassandraNode(spec) for spec in specs]
        try:
            for node in nodes:
                await node.start()
            for node in nodes:
                await node.wait_ready(timeout=120)
            # Before a NetworkTopologyStrategy keyspace: every DC's tokens known.
            await nodes[0].wait_ring({"us-east", "eu"}, timeout=60)
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import glob
import ipaddress
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from mesh.core.versions import CASSANDRA_VERSION
from mesh.harness.paths import cache_dir
from mesh.harness.ports import allocate
from mesh.harness.process import die_with_parent

__all__ = [
    "CASSANDRA_VERSION",
    "CassandraError",
    "CassandraNode",
    "CassandraNodeSpec",
    "allocate_storage_port",
    "build_command",
    "cached_jars",
    "cql_ping",
    "cql_query",
    "ensure_jars",
    "find_java",
    "plan_cluster",
    "render_config",
    "wait_schema_agreement",
]

logger = logging.getLogger(__name__)

# Waits take an explicit ``timeout`` (ASYNC109 silenced) because each poll loop needs
# its own deadline to report *what* did not happen, with the node's log tail.


DAEMON_CLASS = "org.apache.cassandra.service.CassandraDaemon"

# Pinned so the fetch does not depend on whatever plugin version the local Maven's
# super-POM happens to bind.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

# Logged by PipelineConfigurator once the native transport is bound, and by
# CassandraDaemon after start-up has finished (after the ring join).
_CQL_LISTENING = "Starting listening for CQL clients"
_STARTUP_COMPLETE = "Startup complete"

# JPMS flags from upstream conf/jvm17-server.options (cassandra-5.0). Cassandra and
# its libraries reach into JDK internals: jamm/ObjectSizes measure objects through
# jdk.internal.misc and java.lang reflection, netty and the buffer pool use
# sun.nio.ch / java.nio direct buffers and Unsafe (jdk.unsupported/sun.misc),
# FileUtils cleans mmapped buffers via jdk.internal.ref, the JMX/RMI code uses
# sun.rmi.*, and the UDF sandbox uses javac internals. Without them the daemon
# fails with InaccessibleObjectException.
_JPMS_FLAGS: tuple[str, ...] = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
)


class CassandraError(RuntimeError):
    """Fetching the jars, or starting or reaching a Cassandra node, failed."""


# --------------------------------------------------------------------------- jars


def find_java() -> str:
    """Returns the ``java`` executable to run Cassandra with.

    Cassandra 5.0 supports Java 11 and 17 only, and ``/usr/bin/java`` may point at a
    newer JDK on some machines, so an installed JDK 17 is preferred by path.

    Returns:
        ``$CHATMESH_JAVA`` if set, else a JDK 17 under ``/usr/lib/jvm``, else the
        first ``java`` on ``PATH``.

    Raises:
        CassandraError: No java executable was found.
    """
    explicit = os.environ.get("CHATMESH_JAVA")
    if explicit:
        return explicit
    for candidate in sorted(glob.glob("/usr/lib/jvm/*17*/bin/java")):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    if found is None:
        raise CassandraError("no java found: install JDK 17 or set CHATMESH_JAVA")
    return found


def _fetch_pom(version: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by mesh/harness/servers/cassandra.py: only used to resolve Cassandra's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>chatmesh.cache</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path``, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise CassandraError(f"timed out waiting for lock {path}") from exc
                # Another process is fetching; its Maven run takes seconds, not ms.
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_COMPLETE_MARKER = ".complete"


def cached_jars(cache: Path | None = None, *, version: str = CASSANDRA_VERSION) -> Path | None:
    """Returns the folder of Cassandra's jars if they are fetched already, else None.

    Never fetches (see :func:`ensure_jars`).

    Args:
        cache: Cache root; defaults to :func:`mesh.harness.paths.cache_dir`.
        version: ``cassandra-all`` version.
    """
    root = (cache or cache_dir()) / f"cassandra-{version}"
    return root / "lib" if (root / _COMPLETE_MARKER).exists() else None


def ensure_jars(
    cache: Path | None = None,
    *,
    version: str = CASSANDRA_VERSION,
    timeout: float = 900.0,
) -> Path:
    """Makes sure Cassandra's runtime jars are in the cache and returns their folder.

    Idempotent and cheap once done (one ``stat``). The first call runs
    ``mvn dependency:copy-dependencies`` on a generated POM; a lock file keeps two
    processes from fetching at once, and the folder only appears complete (marker
    file) after Maven succeeded.

    Args:
        cache: Cache root; defaults to :func:`mesh.harness.paths.cache_dir`.
        version: ``cassandra-all`` version to resolve.
        timeout: Bound in seconds for waiting on the lock plus the Maven run.

    Returns:
        ``<cache>/cassandra-<version>/lib`` holding ``cassandra-all-<version>.jar``
        and every runtime dependency.

    Raises:
        CassandraError: Maven is missing, failed or timed out.
    """
    root = (cache or cache_dir()) / f"cassandra-{version}"
    lib = root / "lib"
    marker = root / _COMPLETE_MARKER
    if marker.exists():
        return lib
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _file_lock(root / ".lock", timeout):
        if marker.exists():  # another process finished while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise CassandraError("Maven (mvn) is needed to fetch Cassandra jars")
        (root / "pom.xml").write_text(_fetch_pom(version))
        staging = root / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        logger.info("fetching cassandra-all %s and its dependencies with Maven", version)
        remaining = max(1.0, timeout - (time.monotonic() - started))
        try:
            result = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(root / "pom.xml"),
                    f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CassandraError(f"Maven did not finish within {remaining:.0f}s") from exc
        jar = staging / f"cassandra-all-{version}.jar"
        if result.returncode != 0 or not jar.exists():
            raise CassandraError(
                f"Maven failed ({result.returncode}) resolving cassandra-all {version}:\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        marker.write_text("\n".join(sorted(p.name for p in lib.glob("*.jar"))) + "\n")
        logger.info(
            "cassandra %s: %d jars in %s (%.1fs)",
            version,
            len(list(lib.glob("*.jar"))),
            lib,
            time.monotonic() - started,
        )
    return lib


# --------------------------------------------------------------------------- specs


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def allocate_storage_port(listen_address: str, broadcast_address: str) -> int:
    """Returns a port free on both of a node's addresses.

    Cassandra gossips one storage port, so the node listens on
    ``listen_address:P`` and the link proxy on ``broadcast_address:P``.

    Args:
        listen_address: The node's real loopback address.
        broadcast_address: The proxy's loopback address.

    Returns:
        The port.

    Raises:
        CassandraError: No port was free on both addresses after 50 tries.
    """
    for _ in range(50):
        port = allocate(listen_address)
        if _port_free(broadcast_address, port):
            return port
    raise CassandraError(f"no port free on both {listen_address} and {broadcast_address}")


@dataclass(frozen=True)
class CassandraNodeSpec:
    """Everything needed to render one node's configuration.

    The node is identified cluster-wide by ``broadcast_address:storage_port``.
    """

    name: str
    """Node name, used for folders and logs (e.g. ``cass-us-east``)."""
    dc: str
    """Datacenter name gossiped by GossipingPropertyFileSnitch: the region (``us-east``)."""
    listen_address: str
    """Real loopback address the node binds for peers and CQL clients."""
    broadcast_address: str
    """Address gossiped to peers; the link proxy listens here."""
    native_port: int
    """CQL port on ``listen_address``."""
    storage_port: int
    """Internode port, the same on ``listen_address`` and ``broadcast_address``."""
    seeds: tuple[str, ...]
    """Seed endpoints as ``broadcast_address:storage_port``."""
    data_dir: Path
    """Folder for this node's conf, logs, data, commit log and hints."""
    rack: str = "rack1"
    """Rack name within the DC."""
    cluster_name: str = "chatmesh"
    """All nodes of one cluster must agree on it."""
    heap_mb: int = 512
    """-Xms/-Xmx in MiB. 512 is enough for tests; production wants more."""
    num_tokens: int = 4
    """Virtual nodes per node; few tokens keep start-up and repair cheap."""
    hints_flush_period_ms: int = 1000
    """How often buffered hints are written to disk (upstream default 10 s).

    Delivery itself runs on a fixed 10 s trigger in HintsService (not configurable):
    a trigger closes the hint file being written, the next one dispatches it to
    peers the failure detector sees alive. Convergence after a heal therefore
    takes 0-20 s once the peer is seen UP."""
    write_request_timeout_ms: int = 2000
    """Coordinator wait for replica acks; an expired remote write becomes a hint."""
    phi_convict_threshold: float = 8.0
    """Failure detector sensitivity, 5..16 (upstream default 8: a silent peer is
    convicted after ~20 s; 5 convicts after ~12 s)."""
    ring_delay_ms: int = 1000
    """``cassandra.ring_delay_ms`` (upstream default 30 s). A seed starting while its
    peer seeds are unreachable (other region down or cut off) waits this long in the
    gossip shadow round. Short is safe here because every node is a seed and none
    bootstraps; raise it for clusters with bootstrapping (non-seed) nodes."""
    extra_jvm_options: tuple[str, ...] = field(default_factory=tuple)
    """Appended after the generated JVM flags (e.g. ``-XX:TieredStopAtLevel=1``)."""

    @property
    def endpoint(self) -> str:
        """The node's cluster-wide identity, ``broadcast_address:storage_port``."""
        return f"{self.broadcast_address}:{self.storage_port}"

    @property
    def proxy_listen(self) -> str:
        """Where the link proxy towards this node must listen."""
        return self.endpoint

    @property
    def proxy_upstream(self) -> str:
        """Where the link proxy towards this node must forward to."""
        return f"{self.listen_address}:{self.storage_port}"

    @property
    def conf_dir(self) -> Path:
        """Folder holding the rendered configuration files (on the classpath)."""
        return self.data_dir / "conf"

    @property
    def log_dir(self) -> Path:
        """Folder holding ``system.log`` and ``stdout.log``."""
        return self.data_dir / "logs"


def plan_cluster(
    dcs: Sequence[str],
    root: Path,
    *,
    subnet: int = 60,
    heap_mb: int = 512,
    num_tokens: int = 4,
    cluster_name: str = "chatmesh",
) -> list[CassandraNodeSpec]:
    """Lays out one node per DC on its own pair of loopback addresses.

    Node ``i`` listens on ``127.<subnet+i>.0.1`` and is reached by peers at
    ``127.<subnet+i>.0.2`` (its proxy). Every node is a seed, so none bootstraps
    and all can start at the same time on an empty cluster.

    Args:
        dcs: Datacenter (region) names, one node each.
        root: Parent folder; node ``i`` gets ``root/cass-<dc>``.
        subnet: Second octet of the first node's addresses.
        heap_mb: Heap per node in MiB.
        num_tokens: Tokens per node.
        cluster_name: Cluster name.

    Returns:
        One spec per DC, in the order given.
    """
    addresses = [(f"127.{subnet + i}.0.1", f"127.{subnet + i}.0.2") for i in range(len(dcs))]
    storage_ports = [allocate_storage_port(listen, bcast) for listen, bcast in addresses]
    seeds = tuple(
        f"{bcast}:{port}" for (_, bcast), port in zip(addresses, storage_ports, strict=True)
    )
    return [
        CassandraNodeSpec(
            name=f"cass-{dc}",
            dc=dc,
            listen_address=listen,
            broadcast_address=bcast,
            native_port=allocate(listen),
            storage_port=port,
            seeds=seeds,
            data_dir=root / f"cass-{dc}",
            heap_mb=heap_mb,
            num_tokens=num_tokens,
            cluster_name=cluster_name,
        )
        for dc, (listen, bcast), port in zip(dcs, addresses, storage_ports, strict=True)
    ]


# --------------------------------------------------------------------------- config


def _yaml(spec: CassandraNodeSpec) -> str:
    d = spec.data_dir
    # Memtables on heap (heap_buffers) so RSS stays close to -Xmx; 1/8 of the heap
    # flushes early instead of risking GC pressure on a 512 MiB heap.
    memtable_mb = max(16, spec.heap_mb // 8)
    return f"""# Rendered by mesh/harness/servers/cassandra.py for node {spec.name}; do not edit.
cluster_name: '{spec.cluster_name}'
num_tokens: {spec.num_tokens}
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
# A fresh 5.0-only cluster: no need for the 4.x-compatible sstable/messaging format.
storage_compatibility_mode: NONE

listen_address: {spec.listen_address}
# Peers dial the broadcast address, where the link proxy listens; the node itself
# must not bind it (listen_on_broadcast_address: false) or the proxy could not.
broadcast_address: {spec.broadcast_address}
listen_on_broadcast_address: false
storage_port: {spec.storage_port}
rpc_address: {spec.listen_address}
native_transport_port: {spec.native_port}
start_native_transport: true
native_transport_max_threads: 16

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{",".join(spec.seeds)}"
endpoint_snitch: GossipingPropertyFileSnitch
phi_convict_threshold: {spec.phi_convict_threshold}
# Delay fidelity: without nodelay Nagle holds small inter-DC messages back.
inter_dc_tcp_nodelay: true
internode_compression: none

data_file_directories:
  - {d / "data"}
commitlog_directory: {d / "commitlog"}
saved_caches_directory: {d / "saved_caches"}
hints_directory: {d / "hints"}
cdc_enabled: false
cdc_raw_directory: {d / "cdc_raw"}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
commitlog_total_space: 256MiB

hinted_handoff_enabled: true
max_hint_window: 3h
hints_flush_period: {spec.hints_flush_period_ms}ms
max_hints_delivery_threads: 2
hinted_handoff_throttle: 1024KiB
max_hints_file_size: 32MiB

write_request_timeout: {spec.write_request_timeout_ms}ms
read_request_timeout: 5000ms
range_request_timeout: 10000ms
counter_write_request_timeout: 5000ms
request_timeout: 10000ms

# Sized for a 2-core box running several nodes plus the services.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
memtable_flush_writers: 1
memtable_allocation_type: heap_buffers
memtable_heap_space: {memtable_mb}MiB
key_cache_size: 8MiB
counter_cache_size: 4MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB
prepared_statements_cache_size: 8MiB
index_summary_capacity: 8MiB
compaction_throughput: 64MiB/s

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

# Test and dev clusters: no snapshot on TRUNCATE/DROP (it costs disk and time).
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
materialized_views_enabled: false
sasi_indexes_enabled: false
transient_replication_enabled: false
diagnostic_events_enabled: false
"""


def _rackdc(spec: CassandraNodeSpec) -> str:
    # prefer_local: nodes of the same DC talk over listen addresses (no proxy);
    # only inter-DC traffic crosses the link proxy.
    return (
        f"# Rendered by mesh/harness/servers/cassandra.py for node {spec.name}.\n"
        f"dc={spec.dc}\nrack={spec.rack}\nprefer_local=true\n"
    )


def _logback(spec: CassandraNodeSpec) -> str:
    log = spec.log_dir / "system.log"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Rendered by mesh/harness/servers/cassandra.py for node {spec.name}. -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log}.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
  </root>
</configuration>
"""


def _jvm_options(spec: CassandraNodeSpec) -> list[str]:
    conf = spec.conf_dir
    options = [
        # From conf/jvm-server.options. Dropped on purpose: -XX:+AlwaysPreTouch (would
        # fault in the whole heap at start: slower start, RSS = heap at once),
        # -XX:-UseBiasedLocking (deprecated on 17), -XX:+UseNUMA (one socket here),
        # -XX:+HeapDumpOnOutOfMemoryError (heap dumps would fill the test disk).
        "-ea",
        "-da:net.openhft...",
        "-XX:+UseThreadPriorities",
        "-Xss256k",
        "-XX:+UseTLAB",
        "-XX:+ResizeTLAB",
        "-XX:+PerfDisableSharedMem",
        "-Djava.net.preferIPv4Stack=true",
        f"-Xms{spec.heap_mb}M",
        f"-Xmx{spec.heap_mb}M",
        # G1 settings from conf/jvm17-server.options, minus G1HeapRegionSize=16m: on
        # a 512 MiB heap that leaves only 32 regions; the JVM's own choice fits.
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:MaxTenuringThreshold=1",
        "-XX:G1RSetUpdatingPauseTimePercent=5",
        "-XX:MaxGCPauseMillis=300",
        "-XX:InitiatingHeapOccupancyPercent=70",
        *_JPMS_FLAGS,
        "-Dio.netty.tryReflectionSetAccessible=true",
        "-Dio.netty.allocator.useCacheForAllThreads=true",
        "-Dio.netty.allocator.maxOrder=11",
        # Start-up: every node is a seed of an empty cluster, so there is nothing to
        # wait for; the default gossip settle loop alone costs >= 5 s.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        f"-Dcassandra.ring_delay_ms={spec.ring_delay_ms}",
        # Keep stdout/stderr open (CassandraDaemon closes them unless foreground) so
        # JVM-level failures land in stdout.log.
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
        f"-Dcassandra.storagedir={spec.data_dir}",
        f"-Dcassandra.logdir={spec.log_dir}",
        f"-Dlogback.configurationFile={conf / 'logback.xml'}",
        f"-Dcassandra-rackdc.properties=file://{conf / 'cassandra-rackdc.properties'}",
    ]
    # Neither cassandra.jmx.local.port nor .remote.port is set: the daemon opens no JMX
    # port at all (nothing to collide, nothing to secure; so no nodetool either).
    options.extend(spec.extra_jvm_options)
    return options


def render_config(spec: CassandraNodeSpec) -> dict[str, str]:
    """Renders a node's configuration files.

    Args:
        spec: The node.

    Returns:
        File name -> content for ``cassandra.yaml``, ``cassandra-rackdc.properties``,
        ``logback.xml`` and ``jvm.options`` (one JVM flag per line; the classpath and
        the jamm agent are added by :func:`build_command`).
    """
    return {
        "cassandra.yaml": _yaml(spec),
        "cassandra-rackdc.properties": _rackdc(spec),
        "logback.xml": _logback(spec),
        "jvm.options": "\n".join(_jvm_options(spec)) + "\n",
    }


def build_command(spec: CassandraNodeSpec, lib: Path, java: str | None = None) -> list[str]:
    """Returns the argv that starts the node.

    Args:
        spec: The node.
        lib: Folder from :func:`ensure_jars`.
        java: Java executable; defaults to :func:`find_java`.

    Returns:
        ``[java, *jvm options, -javaagent:jamm, -cp conf:lib/*, CassandraDaemon]``.

    Raises:
        CassandraError: The jamm jar is not in ``lib``.
    """
    jamm = sorted(lib.glob("jamm-*.jar"))
    if not jamm:
        raise CassandraError(f"jamm agent jar missing from {lib}")
    return [
        java or find_java(),
        *_jvm_options(spec),
        # cassandra-env.sh: jamm measures memtable/cache object sizes via the
        # Instrumentation API, which only an agent gets.
        f"-javaagent:{jamm[-1]}",
        "-cp",
        f"{spec.conf_dir}:{lib}/*",
        DAEMON_CLASS,
    ]


# --------------------------------------------------------------------------- tiny CQL client

# Just enough of native protocol v4 (STARTUP, OPTIONS, QUERY, Rows results) to read
# system tables for readiness, ring membership and schema agreement without making
# the harness depend on cassandra-driver. Anything fancier belongs to the driver.
_CQL_V4_REQUEST = 0x04
_CQL_V4_RESPONSE = 0x84
_OP_ERROR, _OP_STARTUP, _OP_READY, _OP_OPTIONS, _OP_SUPPORTED = 0x00, 0x01, 0x02, 0x05, 0x06
_OP_QUERY, _OP_RESULT = 0x07, 0x08
_RESULT_ROWS = 0x0002
_CONSISTENCY_ONE = 0x0001

CqlValue = object
"""A decoded cell: str, int, bool, uuid.UUID, ipaddress address, list, set, dict,
bytes (types this client does not decode) or None."""


class _Buf:
    """Cursor over a response body, reading protocol v4 notations."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CassandraError("truncated CQL frame")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def read_short(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def read_string(self) -> str:
        return self.take(self.read_short()).decode("utf-8")

    def read_bytes(self) -> bytes | None:
        length = self.read_int()
        return None if length < 0 else self.take(length)


# A type option is (id, sub-options); collections carry their element types.
_CqlType = tuple[int, tuple["_CqlType", ...]]


def _read_type(buf: _Buf) -> _CqlType:
    kind = buf.read_short()
    if kind == 0x0000:  # custom: class name
        buf.read_string()
        return (kind, ())
    if kind in (0x0020, 0x0022):  # list, set
        return (kind, (_read_type(buf),))
    if kind == 0x0021:  # map
        return (kind, (_read_type(buf), _read_type(buf)))
    if kind == 0x0030:  # UDT: keyspace, name, fields
        buf.read_string()
        buf.read_string()
        fields = tuple((buf.read_string(), _read_type(buf))[1] for _ in range(buf.read_short()))
        return (kind, fields)
    if kind == 0x0031:  # tuple
        return (kind, tuple(_read_type(buf) for _ in range(buf.read_short())))
    return (kind, ())


def _decode(cql_type: _CqlType, raw: bytes | None) -> CqlValue:
    if raw is None:
        return None
    kind, subs = cql_type
    if kind in (0x0001, 0x000D):  # ascii, varchar
        return raw.decode("utf-8")
    if kind in (0x0002, 0x0005, 0x0009, 0x000B, 0x0013, 0x0014):  # ints, counter, timestamp
        return int.from_bytes(raw, "big", signed=True)
    if kind == 0x0004:
        return raw != b"\x00"
    if kind in (0x000C, 0x000F):
        return uuid.UUID(bytes=raw)
    if kind == 0x0010:
        return ipaddress.ip_address(raw)
    if kind in (0x0020, 0x0022, 0x0021):
        buf = _Buf(raw)
        count = buf.read_int()
        if kind == 0x0021:
            return {
                _decode(subs[0], buf.read_bytes()): _decode(subs[1], buf.read_bytes())
                for _ in range(count)
            }
        items = [_decode(subs[0], buf.read_bytes()) for _ in range(count)]
        return set(items) if kind == 0x0022 else items
    return raw


def _parse_rows(buf: _Buf) -> list[tuple[CqlValue, ...]]:
    flags = buf.read_int()
    columns = buf.read_int()
    if flags & 0x0002:  # has more pages: paging state
        buf.read_bytes()
    types: list[_CqlType] = []
    if not flags & 0x0004:  # metadata present
        if flags & 0x0001:  # global table spec
            buf.read_string()
            buf.read_string()
        for _ in range(columns):
            if not flags & 0x0001:
                buf.read_string()
                buf.read_string()
            buf.read_string()  # column name
            types.append(_read_type(buf))
    else:
        types = [(0x0003, ())] * columns  # no metadata: leave cells as bytes
    return [
        tuple(_decode(types[c], buf.read_bytes()) for c in range(columns))
        for _ in range(buf.read_int())
    ]


async def _cql_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opcode: int, body: bytes
) -> tuple[int, _Buf]:
    writer.write(struct.pack(">BBhBi", _CQL_V4_REQUEST, 0, 1, opcode, len(body)) + body)
    await writer.drain()
    version, _flags, _stream, op, length = struct.unpack(">BBhBi", await reader.readexactly(9))
    if version != _CQL_V4_RESPONSE:
        raise CassandraError(f"unexpected CQL response version {version:#x}")
    buf = _Buf(await reader.readexactly(length))
    if op == _OP_ERROR:
        code = buf.read_int()
        raise CassandraError(f"CQL error {code:#06x}: {buf.read_string()}")
    return op, buf


async def cql_query(
    host: str,
    port: int,
    query: str,
    timeout: float = 5.0,
) -> list[tuple[CqlValue, ...]]:
    """Runs one CQL statement at consistency ONE over a fresh connection.

    Meant for system tables (``system.local``, ``system.peers_v2``) in readiness
    checks; applications should use cassandra-driver.

    Args:
        host: Native transport address.
        port: Native transport port.
        query: The statement; no bind parameters.
        timeout: Bound for connect, handshake and answer, in seconds.

    Returns:
        The rows as tuples in column order (empty for non-row results).

    Raises:
        CassandraError: The server answered with an error or something unexpected.
        OSError, TimeoutError: The node could not be reached in time.
    """
    startup = struct.pack(">H", 1)
    for text in ("CQL_VERSION", "3.0.0"):
        startup += struct.pack(">H", len(text)) + text.encode()
    encoded = query.encode("utf-8")
    body = struct.pack(">i", len(encoded)) + encoded + struct.pack(">HB", _CONSISTENCY_ONE, 0)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            op, _ = await _cql_exchange(reader, writer, _OP_STARTUP, startup)
            if op != _OP_READY:  # e.g. AUTHENTICATE: this client does no auth
                raise CassandraError(f"CQL STARTUP answered with opcode {op:#x}")
            op, buf = await _cql_exchange(reader, writer, _OP_QUERY, body)
    except asyncio.IncompleteReadError as exc:
        raise CassandraError("CQL connection closed mid-frame") from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if op != _OP_RESULT or buf.read_int() != _RESULT_ROWS:
        return []
    return _parse_rows(buf)


async def cql_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """Checks that a CQL native transport answers an ``OPTIONS`` request.

    Args:
        host: Native transport address.
        port: Native transport port.
        timeout: Bound for connect plus answer, in seconds.

    Returns:
        True if the server answered ``SUPPORTED``.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            op, _ = await _cql_exchange(reader, writer, _OP_OPTIONS, b"")
    except (OSError, asyncio.IncompleteReadError, TimeoutError, CassandraError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return op == _OP_SUPPORTED


async def wait_schema_agreement(nodes: Sequence[CassandraNode], timeout: float = 60.0) -> str:
    """Waits until every node reports the same schema version.

    Args:
        nodes: Running nodes (each is asked over its own CQL port).
        timeout: Bound in seconds.

    Returns:
        The agreed schema version.

    Raises:
        CassandraError: No agreement within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    versions: set[CqlValue] = set()
    while True:
        with contextlib.suppress(OSError, TimeoutError, CassandraError):
            versions = set()
            for node in nodes:
                rows = await cql_query(
                    node.spec.listen_address,
                    node.spec.native_port,
                    "SELECT schema_version FROM system.local",
                )
                versions.update(row[0] for row in rows)
            if len(versions) == 1:
                return str(versions.pop())
        if time.monotonic() > deadline:
            raise CassandraError(f"no schema agreement within {timeout}s: {versions}")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- node


class CassandraNode:
    """One Cassandra daemon process, started from rendered config.

    Use as ``async with CassandraNode(spec) as node:`` (starts and waits ready) or
    call :meth:`start`, :meth:`wait_ready` and :meth:`stop` yourself.
    """

    def __init__(
        self,
        spec: CassandraNodeSpec,
        *,
        lib: Path | None = None,
        java: str | None = None,
    ) -> None:
        """Prepares (does not start) a node.

        Args:
            spec: The node.
            lib: Jar folder; :func:`ensure_jars` is called on start when omitted.
            java: Java executable; :func:`find_java` when omitted.
        """
        self.spec = spec
        self._lib = lib
        self._java = java
        self._proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None
        """``time.monotonic()`` when the process was launched."""
        self.ready_after: float | None = None
        """Seconds from launch to ready, once :meth:`wait_ready` succeeded."""

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it was started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """Cassandra's ``system.log``."""
        return self.spec.log_dir / "system.log"

    @property
    def stdout_path(self) -> Path:
        """The JVM's stdout and stderr (start-up crashes end up here)."""
        return self.spec.log_dir / "stdout.log"

    @property
    def running(self) -> bool:
        """True while the process exists and has not exited."""
        return self._proc is not None and self._proc.returncode is None

    def rss_kib(self) -> int | None:
        """Returns the resident set size of the daemon in KiB, or None if not running."""
        if self.pid is None or not self.running:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def write_config(self) -> None:
        """Creates the node's folders and writes its rendered configuration."""
        spec = self.spec
        for sub in (spec.conf_dir, spec.log_dir):
            sub.mkdir(parents=True, exist_ok=True)
        for name, content in render_config(spec).items():
            (spec.conf_dir / name).write_text(content)

    async def start(self) -> None:
        """Renders the config and launches the daemon (does not wait for readiness).

        Raises:
            CassandraError: Already started, or jars cannot be fetched.
        """
        if self.running:
            raise CassandraError(f"{self.spec.name} already running (pid {self.pid})")
        lib = self._lib if self._lib is not None else await asyncio.to_thread(ensure_jars)
        self._lib = lib
        self.write_config()
        argv = build_command(self.spec, lib, self._java)
        # A local log file, opened once per start: not worth a thread hop.
        with open(self.stdout_path, "ab") as out:  # noqa: ASYNC230
            # Own session: stop() signals the whole group, so nothing is left behind.
            self._proc = await asyncio.create_subprocess_exec(
                *die_with_parent(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.spec.data_dir,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.ready_after = None
        logger.info(
            "started %s (dc %s) pid %d listen %s:%d cql %d broadcast %s",
            self.spec.name,
            self.spec.dc,
            self._proc.pid,
            self.spec.listen_address,
            self.spec.storage_port,
            self.spec.native_port,
            self.spec.broadcast_address,
        )

    def log_size(self) -> int:
        """Returns the current size of ``system.log`` (an offset for :meth:`wait_log`)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)

    def _check_alive(self) -> None:
        if self._proc is None:
            raise CassandraError(f"{self.spec.name} was not started")
        if self._proc.returncode is not None:
            raise CassandraError(
                f"{self.spec.name} exited with {self._proc.returncode}\n{self._tail()}"
            )

    async def wait_log(self, needle: str, timeout: float, *, offset: int = 0) -> int:
        """Waits until ``system.log`` contains ``needle`` after byte ``offset``.

        Args:
            needle: Text to find (plain substring).
            timeout: Bound in seconds.
            offset: Only look at log bytes from here on (see :meth:`log_size`).

        Returns:
            The byte offset just after the line holding the match.

        Raises:
            CassandraError: The process exited, or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            text = self._log_since(offset)
            index = text.find(needle)
            if index >= 0:
                end = text.find("\n", index)
                consumed = text[: end + 1 if end >= 0 else len(text)]
                return offset + len(consumed.encode("utf-8"))
            if time.monotonic() > deadline:
                raise CassandraError(
                    f"{self.spec.name}: {needle!r} not logged within {timeout}s\n{self._tail()}"
                )
            # Polling a file is the readiness signal here; 100 ms keeps the cost low.
            await asyncio.sleep(0.1)

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Waits until the node has joined the ring and serves CQL.

        Ready means: ``Startup complete`` is logged (the daemon logs it after the
        ring join and after binding the native transport) and the CQL port answers
        an ``OPTIONS`` request.

        Args:
            timeout: Bound in seconds, counted from now.

        Returns:
            Seconds from launch to ready.

        Raises:
            CassandraError: The process exited or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        await self.wait_log(_CQL_LISTENING, timeout)
        await self.wait_log(_STARTUP_COMPLETE, max(0.1, deadline - time.monotonic()))
        while not await cql_ping(self.spec.listen_address, self.spec.native_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise CassandraError(f"{self.spec.name}: CQL port not answering\n{self._tail()}")
            await asyncio.sleep(0.1)
        assert self.started_at is not None
        self.ready_after = time.monotonic() - self.started_at
        logger.info("%s ready after %.1fs", self.spec.name, self.ready_after)
        return self.ready_after

    async def query(self, cql: str, timeout: float = 5.0) -> list[tuple[CqlValue, ...]]:
        """Runs a CQL statement on this node with :func:`cql_query` (system tables)."""
        return await cql_query(self.spec.listen_address, self.spec.native_port, cql, timeout)

    async def wait_ring(self, dcs: Collection[str], timeout: float) -> dict[str, str]:
        """Waits until this node counts a token-owning node of every DC in ``dcs``.

        Gossip marks a peer UP before its tokens (NORMAL state) are applied, and a
        ``NetworkTopologyStrategy`` keyspace naming a DC this node has no ring member
        for is rejected ("Unrecognized strategy option"). ``system.peers_v2`` gets the
        peer's tokens when its NORMAL state is applied, so that is the signal.

        Args:
            dcs: DC names that must be present (this node's own DC counts).
            timeout: Bound in seconds.

        Returns:
            Peer endpoint (``ip:port``) -> DC, for the peers seen with tokens.

        Raises:
            CassandraError: The process exited, or the deadline passed.
        """
        deadline = time.monotonic() + timeout
        wanted = set(dcs)
        seen: dict[str, str] = {}
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, TimeoutError, CassandraError):
                rows = await self.query(
                    "SELECT peer, peer_port, data_center, tokens FROM system.peers_v2"
                )
                seen = {f"{row[0]}:{row[1]}": str(row[2]) for row in rows if row[2] and row[3]}
                if wanted <= set(seen.values()) | {self.spec.dc}:
                    return seen
            if time.monotonic() > deadline:
                raise CassandraError(
                    f"{self.spec.name}: ring lacks DCs {wanted} after {timeout}s (has {seen})"
                )
            await asyncio.sleep(0.2)

    async def wait_peer_state(
        self,
        peer: CassandraNodeSpec,
        up: bool,
        timeout: float,
        *,
        offset: int = 0,
    ) -> int:
        """Waits until this node's failure detector marks ``peer`` UP or DOWN.

        Args:
            peer: The other node.
            up: True to wait for UP, False for DOWN.
            timeout: Bound in seconds.
            offset: Only consider log lines after this byte offset.

        Returns:
            The log offset after the matching line.

        Raises:
            CassandraError: The process exited, or the deadline passed.
        """
        state = "UP" if up else "DOWN"
        return await self.wait_log(f"/{peer.endpoint} is now {state}", timeout, offset=offset)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stops the daemon: SIGTERM to its process group, SIGKILL after ``timeout``.

        Safe to call more than once, or on a node that never started.

        Args:
            timeout: Seconds to wait for a clean shutdown before killing.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            logger.warning("%s ignored SIGTERM for %.0fs; killing", self.spec.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        logger.info("stopped %s (exit %s)", self.spec.name, proc.returncode)

    async def __aenter__(self) -> CassandraNode:
        """Starts the node and waits until it is ready (stops it again on failure)."""
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the node."""
        await self.stop()
