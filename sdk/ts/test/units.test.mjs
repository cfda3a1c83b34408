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
  subscribeWithResume,
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

test("an event beyond a channel's next seq is a gap, not a new event", () => {
  const tracker = new SeqTracker({ ch_a: 4n });
  assert.equal(tracker.isGap(event("ch_a", 5n)), false);
  assert.equal(tracker.isGap(event("ch_a", 7n)), true);
  assert.equal(tracker.isGap(event("ch_b", 9n)), false, "first sight of a channel");
  assert.equal(tracker.isGap(event("ch_a", 0n, { case: "typingChanged", value: {} })), false);
});

/** A fake NotificationService client: each subscribe() call plays the next script. */
function fakeNotifications(scripts) {
  const calls = [];
  return {
    calls,
    subscribe(request, { signal }) {
      calls.push(request.resumeFrom);
      const script = scripts.shift() ?? { items: [], hang: true };
      return (async function* () {
        for (const item of script.items) yield item;
        if (script.error) throw script.error;
        if (script.hang) {
          await new Promise((_, reject) => {
            const stop = () => reject(new ConnectError("aborted", Code.Canceled));
            if (signal.aborted) stop();
            else signal.addEventListener("abort", stop);
          });
        }
      })();
    },
  };
}

const ev = (channelId, seq) => ({ kind: { case: "event", value: event(channelId, seq) } });
const live = { kind: { case: "replayComplete", value: { region: "eu", instanceId: "n1", replayedEvents: 0n } } };

function streamGap(channelId, last, lastMissing) {
  const entry = (k, v) => new BinaryWriter().tag(1, 2).string(k).tag(2, 2).string(v).finish();
  const w = new BinaryWriter().tag(1, 2).string("STREAM_GAP").tag(2, 2).string("chatmesh.dev");
  const meta = [["channel_id", channelId], ["last_delivered_seq", String(last)],
    ["first_missing_seq", String(last + 1n)], ["last_missing_seq", String(lastMissing)]];
  for (const [k, v] of meta) w.tag(3, 2).bytes(entry(k, v));
  const err = new ConnectError("gap", Code.Unavailable);
  err.details = [{ type: "google.rpc.ErrorInfo", value: w.finish() }];
  return err;
}

/** Runs a subscription over scripted streams until `count` events were delivered. */
async function follow(scripts, regionHas, count) {
  const fake = fakeNotifications(scripts);
  const ctl = new AbortController();
  const seen = [];
  const states = [];
  const asked = [];
  let enough;
  const done = new Promise((resolve) => (enough = resolve));
  const sub = subscribeWithResume(fake, () => "t.e.s", {
    onEvent: (e) => {
      seen.push(e.seq);
      if (seen.length === count) enough();
    },
    onState: (s) => states.push(s.kind),
  }, {
    signal: ctl.signal, resumeFrom: { ch_a: 0n }, backoff: { initialMs: 1, maxMs: 2 },
    historyLastSeq: async (ch, after) => {
      asked.push([ch, after]);
      return regionHas(asked.length);
    },
  });
  let timer;
  await Promise.race([done, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("timeout")), 5000)))]);
  clearTimeout(timer);
  ctl.abort();
  await sub.done;
  return { seen, calls: fake.calls, states, asked };
}

test("a STREAM_GAP ending waits for GetHistory to hold the range, then resumes from the last seq", async () => {
  const { seen, calls, states, asked } = await follow(
    [
      { items: [live, ev("ch_a", 1n)], error: streamGap("ch_a", 1n, 3n) },
      { items: [ev("ch_a", 2n), ev("ch_a", 3n), live, ev("ch_a", 4n)], hang: true },
    ],
    (n) => (n === 1 ? 1n : 3n), // the region holds the range from the second ask on
    4,
  );
  assert.deepEqual(seen, [1n, 2n, 3n, 4n]);
  assert.deepEqual(calls.map((c) => c.ch_a), [0n, 1n]);
  assert.deepEqual(asked, [["ch_a", 1n], ["ch_a", 1n]]);
  assert.ok(states.includes("gap"));
});

test("an event beyond a gap is not delivered: the stream resumes before it", async () => {
  const { seen, calls } = await follow(
    [
      { items: [live, ev("ch_a", 1n), ev("ch_a", 4n)], hang: true },
      { items: [ev("ch_a", 2n), ev("ch_a", 3n), ev("ch_a", 4n), live], hang: true },
    ],
    () => 4n,
    4,
  );
  assert.deepEqual(seen, [1n, 2n, 3n, 4n]);
  assert.deepEqual(calls.map((c) => c.ch_a), [0n, 1n]);
});
