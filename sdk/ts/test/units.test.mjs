// Unit tests of the client's pure logic (no server): `npm test -w @chatmesh/client`.
// The stream's behaviour against a real edge is tested by tests/sdk/test_ts_client.py.
import assert from "node:assert/strict";
import { test } from "node:test";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import {
  Code,
  ConnectError,
  SeqTracker,
  backoffDelay,
  decodePositions,
  encodePositions,
  errorReason,
  isFatal,
  isRetryable,
  newClientId,
  retryDelayMs,
  tokenSubject,
} from "../../../build/sdk-ts/index.mjs";

const event = (channelId, seq, payload = { case: "messageCreated", value: {} }) => ({ channelId, seq, payload });

test("a channel event is delivered once, in order; ephemeral events always pass", () => {
  const tracker = new SeqTracker({ ch_a: 4n });
  assert.equal(tracker.accept(event("ch_a", 4n)), false, "at the resume position");
  assert.equal(tracker.accept(event("ch_a", 5n)), true);
  assert.equal(tracker.accept(event("ch_a", 5n)), false, "duplicate");
  assert.equal(tracker.accept(event("ch_a", 3n)), false, "late");
  assert.equal(tracker.accept(event("ch_b", 9n)), true, "first sight of a channel");
  assert.equal(tracker.accept(event("ch_a", 0n, { case: "typingChanged", value: {} })), true);
  assert.equal(tracker.accept(event("", 0n, { case: "presenceChanged", value: {} })), true);
  assert.deepEqual(tracker.resumeFrom(), { ch_a: 5n, ch_b: 9n });
});

test("leaving a channel stops resuming it; track only raises", () => {
  const tracker = new SeqTracker();
  tracker.accept(event("ch_a", 7n));
  tracker.accept(event("ch_a", 8n, { case: "memberLeft", value: { userId: "ann" } }), "bob");
  assert.equal(tracker.get("ch_a"), 8n, "someone else left");
  tracker.accept(event("ch_a", 9n, { case: "memberLeft", value: { userId: "bob" } }), "bob");
  assert.equal(tracker.get("ch_a"), undefined, "the viewer left");
  tracker.track("ch_b", 5n);
  tracker.track("ch_b", 3n);
  assert.equal(tracker.get("ch_b"), 5n);
});

test("positions survive storage as JSON; bad storage means no positions", () => {
  const positions = new Map([["ch_a", 12345678901234567n], ["ch_b", 0n]]);
  assert.deepEqual(decodePositions(encodePositions(positions)), positions);
  assert.equal(decodePositions("{not json").size, 0);
  assert.equal(decodePositions(null).size, 0);
  assert.deepEqual([...decodePositions('{"ch_a":"3","ch_b":-1,"ch_c":"x"}')], [["ch_a", 3n]]);
});

test("backoff grows exponentially, is capped, with full jitter over the whole window", () => {
  const opts = { initialMs: 100, maxMs: 1000, multiplier: 2 };
  assert.equal(backoffDelay(1, opts, () => 1), 100);
  assert.equal(backoffDelay(1, opts, () => 0), 0);
  assert.equal(backoffDelay(3, opts, () => 0.5), 200);
  assert.equal(backoffDelay(3, opts, () => 1), 400);
  assert.equal(backoffDelay(30, opts, () => 1), 1000);
});

test("RetryInfo is read; RESOURCE_EXHAUSTED is retried only with it; only UNAVAILABLE for non-idempotent calls", () => {
  // google.rpc.RetryInfo { retry_delay: Duration { seconds: 1, nanos: 250000000 } }
  const duration = new BinaryWriter().tag(1, 0).int64(1).tag(2, 0).int32(250_000_000).finish();
  const retryInfo = new BinaryWriter().tag(1, 2).bytes(duration).finish();
  const shed = new ConnectError("catching up", Code.Unavailable);
  shed.details = [{ type: "google.rpc.RetryInfo", value: retryInfo }];
  assert.equal(retryDelayMs(shed), 1250);
  assert.equal(retryDelayMs(new ConnectError("down", Code.Unavailable)), undefined);
  assert.equal(isRetryable(shed, false), true);
  const limited = new ConnectError("slow down", Code.ResourceExhausted);
  assert.equal(isRetryable(limited), false);
  limited.details = [{ type: "google.rpc.RetryInfo", value: retryInfo }];
  assert.equal(isRetryable(limited), true);
  const timedOut = new ConnectError("late", Code.DeadlineExceeded);
  assert.equal(isRetryable(timedOut), true);
  assert.equal(isRetryable(timedOut, false), false);
});

test("client ids are valid idempotency keys and unique", () => {
  const ids = new Set(Array.from({ length: 1000 }, () => newClientId("m_")));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^m_[0-9a-z]{26}$/);
});

test("the token's subject is read without verification", () => {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(tokenSubject(`${part({ alg: "ES256" })}.${part({ sub: "bob" })}.sig`), "bob");
  assert.equal(tokenSubject("garbage"), undefined);
});

test("error classification and the ErrorInfo reason", () => {
  const info = new BinaryWriter().tag(1, 2).string("NOT_A_MEMBER").tag(2, 2).string("chatmesh.dev").finish();
  const err = new ConnectError("no", Code.PermissionDenied);
  err.details = [{ type: "google.rpc.ErrorInfo", value: info }];
  assert.equal(errorReason(err), "NOT_A_MEMBER");
  assert.equal(isFatal(err), true);
  assert.equal(isRetryable(err), false);
  assert.equal(isFatal(new ConnectError("down", Code.Unavailable)), false);
  assert.equal(isRetryable(new ConnectError("down", Code.Unavailable)), true);
  assert.equal(errorReason(new Error("plain")), undefined);
});
