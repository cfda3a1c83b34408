"""The generated TypeScript (gen/ts) type-checks and works with the pinned npm packages.

Runs the real ``tsc`` from ``node_modules`` (``make node-deps``); skipped only when Node.js
itself is not installed. Probes are compiled in a scratch directory holding a copy of
``gen/ts`` and a link to ``node_modules``, never inside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2

from chatmesh.v1 import events_pb2, message_pb2

REPO = Path(__file__).resolve().parents[2]
TSC = REPO / "node_modules" / ".bin" / "tsc"
NODE = shutil.which("node")
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")

# Uses the generated messages and services the way the web client will.
PROBE = """\
import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { EventSchema, type Event } from "./gen/ts/chatmesh/v1/events_pb.js";
import { CommandService } from "./gen/ts/chatmesh/v1/command_service_pb.js";
import { NotificationService, SubscribeRequestSchema } from "./gen/ts/chatmesh/v1/notification_service_pb.js";

export function roundTrip(bytes: Uint8Array): { bytes: Uint8Array; json: unknown; payload: string | undefined } {
  const event: Event = fromBinary(EventSchema, bytes);
  return { bytes: toBinary(EventSchema, event), json: toJson(EventSchema, event), payload: event.payload.case };
}

export function joined(userId: string): Event {
  return create(EventSchema, {
    eventId: "evt_1",
    seq: 1n,
    occurredAt: timestampFromDate(new Date(0)),
    payload: { case: "memberJoined", value: { userId } },
  });
}

const transport = createGrpcWebTransport({ baseUrl: "http://127.0.0.1:9" });
const commands: Client<typeof CommandService> = createClient(CommandService, transport);
const notifications: Client<typeof NotificationService> = createClient(NotificationService, transport);

export async function send(): Promise<bigint> {
  const response = await commands.sendMessage({ channelId: "ch_x", text: "hi", clientMsgId: "k" });
  return response.message?.seq ?? 0n;
}

export async function firstEvent(): Promise<string | undefined> {
  const request = create(SubscribeRequestSchema, { resumeFrom: { ch_x: 3n } });
  for await (const item of notifications.subscribe(request)) {
    if (item.kind.case === "event") return item.kind.value.eventId;
  }
  return undefined;
}
"""

# Node's globals are declared by hand: @types/node is not one of the pinned packages.
RUNNER = """\
import { roundTrip } from "./probe.js";

declare const process: { argv: string[] };

const hex = process.argv[2] ?? "";
const out = roundTrip(new Uint8Array((hex.match(/../g) ?? []).map((h) => parseInt(h, 16))));
const outHex = Array.from(out.bytes, (b) => b.toString(16).padStart(2, "0")).join("");
console.log(JSON.stringify({ hex: outHex, json: out.json, payload: out.payload }));
"""


def _require_tsc() -> None:
    if not TSC.exists():
        pytest.fail(f"{TSC} is missing: run `make node-deps` (npm ci)")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # npx --no-install: never fetch a tsc from the registry if the pinned one is missing.
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def test_generated_typescript_type_checks() -> None:
    _require_tsc()
    result = _run(["npx", "--no-install", "tsc", "--noEmit", "-p", "tsconfig.json"], REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    """A scratch project: gen/ts copy, node_modules link, a tsconfig extending the root one."""
    _require_tsc()
    shutil.copytree(REPO / "gen" / "ts", tmp_path / "gen" / "ts")
    os.symlink(REPO / "node_modules", tmp_path / "node_modules")
    (tmp_path / "package.json").write_text('{"type": "module"}\n', encoding="utf-8")
    (tmp_path / "probe.ts").write_text(PROBE, encoding="utf-8")
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "extends": str(REPO / "tsconfig.json"),
                "compilerOptions": {"noEmit": False, "outDir": "out"},
                "include": ["gen/ts/**/*.ts", "*.ts"],
            }
        ),
        encoding="utf-8",
    )
    return tmp_path


def test_probe_type_checks_and_a_type_error_is_caught(probe_dir: Path) -> None:
    """Typed use of messages and Connect clients compiles; misuse does not (tsc really checks)."""
    checked = _run([str(TSC), "--noEmit", "-p", "tsconfig.json"], probe_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (probe_dir / "bad.ts").write_text(
        'import { joined } from "./probe.js";\nexport const seq: number = joined("bob").seq;\n',
        encoding="utf-8",
    )
    broken = _run([str(TSC), "--noEmit", "-p", "tsconfig.json"], probe_dir)
    assert broken.returncode != 0
    assert "bad.ts" in broken.stdout and "bigint" in broken.stdout, broken.stdout


def test_typescript_reads_and_writes_python_bytes(probe_dir: Path) -> None:
    """protobuf-es decodes an Event written by google.protobuf and re-encodes the same bytes."""
    (probe_dir / "run.ts").write_text(RUNNER, encoding="utf-8")
    compiled = _run([str(TSC), "-p", "tsconfig.json"], probe_dir)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr

    stamp = timestamp_pb2.Timestamp(seconds=1_764_235_815, nanos=123_456_789)
    event = events_pb2.Event(
        event_id="evt_" + "c" * 26,
        channel_id="ch_" + "a" * 26,
        seq=2**53 + 1,  # beyond a JS number's exact range: must stay a bigint
        origin_region="eu-west",
        occurred_at=stamp,
        message_created=events_pb2.MessageCreated(
            message=message_pb2.Message(message_id="msg_1", text="héllo 👋", created_at=stamp)
        ),
    )
    wire = event.SerializeToString(deterministic=True)
    assert NODE is not None
    ran = _run([NODE, str(probe_dir / "out" / "run.js"), wire.hex()], probe_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = json.loads(ran.stdout)
    assert bytes.fromhex(out["hex"]) == wire
    assert out["payload"] == "messageCreated"
    assert out["json"]["seq"] == str(2**53 + 1)
    assert out["json"]["occurredAt"] == "2025-11-27T09:30:15.123456789Z"
    assert out["json"]["messageCreated"]["message"]["text"] == "héllo 👋"
