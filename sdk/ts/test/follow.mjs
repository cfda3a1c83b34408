// Follows one user's event stream with @chatmesh/client in Node, printing one
// JSON line per callback, until stdin closes (then it aborts and exits 0).
// Driven by tests/sdk/test_ts_client.py and tests/browser/test_tls.py against a real edge:
//   node sdk/ts/test/follow.mjs '{"baseUrl": "http://127.0.0.1:P", "token": "...", "caFile": null}'
// With caFile (an edge started with `chatmesh up --tls`), it trusts that CA through
// @connectrpc/connect-node's transport. Needs the Node bundle: `npm run bundle:node -w @chatmesh/client`.
import { readFileSync } from "node:fs";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { createChatClient } from "../../../build/sdk-ts/index.mjs";

const { baseUrl, token, resumeFrom = {}, caFile = null } = JSON.parse(process.argv[2]);
const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const transport = caFile
  ? ({ baseUrl: url, interceptors }) =>
      createGrpcWebTransport({ baseUrl: url, interceptors, httpVersion: "1.1", nodeOptions: { ca: readFileSync(caFile) } })
  : undefined;
const chat = createChatClient({ baseUrl, token: () => token, ...(transport ? { transport } : {}) });
const stop = new AbortController();
const sub = chat.subscribe(
  {
    onEvent: (e) =>
      print({
        type: "event",
        kind: e.payload.case,
        channelId: e.channelId,
        seq: e.seq.toString(),
        text: e.payload.case === "messageCreated" ? e.payload.value.message?.text : undefined,
      }),
    onReplayComplete: (r) => print({ type: "replay", replayed: r.replayedEvents.toString(), region: r.region }),
    onHeartbeat: () => print({ type: "heartbeat" }),
    onState: (s) =>
      print({ type: "state", kind: s.kind, ...(s.kind === "retrying" ? { code: s.error.code, delayMs: s.delayMs } : {}), ...(s.kind === "stopped" && s.error ? { code: s.error.code } : {}) }),
  },
  {
    signal: stop.signal,
    resumeFrom: Object.fromEntries(Object.entries(resumeFrom).map(([k, v]) => [k, BigInt(v)])),
    backoff: { initialMs: 100, maxMs: 1000 },
  },
);
process.stdin.on("end", () => stop.abort());
process.stdin.resume();
try {
  await sub.done;
  print({ type: "done", positions: Object.fromEntries([...sub.positions()].map(([k, v]) => [k, v.toString()])) });
  process.exit(0);
} catch (err) {
  print({ type: "fatal", code: err.code, message: String(err.message) });
  process.exit(2);
}
