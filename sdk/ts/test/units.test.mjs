// Unit tests of the client's pure logic (no server): `npm test -w @chatmesh/client`.
// The stream's behaviour against a real edge is tested by tests/sdk/test_ts_client.py.
import assert from "node:assert/strict";
import { test } from "node:test";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import {
  ChannelTimeline,
  Code,
  ConnectError,
  SeqTracker,
  compareOrderKeys,
  decodeOriginPositions,
  encodeOriginPositions,
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
  const requests = [];
  return {
    calls,
    requests,
    subscribe(request, { signal }) {
      calls.push(request.resumeFrom);
      requests.push(request);
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

// -- every-region write mode (ADR-026): per-origin positions, (hlc, origin, id) order --------

/** An event stamped by its origin region (seq 0, as the every-region mode sends them). */
const originEvent = (channelId, origin, originSeq, payload = { case: "messageCreated", value: {} }, extra = {}) => ({
  channelId, seq: 0n, originRegion: origin, originSeq, hlc: 0n, eventId: `evt_${origin}_${originSeq}`, payload, ...extra,
});

test("origin events are deduplicated per (channel, origin), not per channel seq", () => {
  const tracker = new SeqTracker(undefined, { ch_a: { eu: 3n } });
  assert.equal(tracker.accept(originEvent("ch_a", "eu", 3n)), false, "at the resume position");
  assert.equal(tracker.accept(originEvent("ch_a", "eu", 4n)), true);
  assert.equal(tracker.accept(originEvent("ch_a", "asia", 1n)), true, "another origin's first event");
  assert.equal(tracker.accept(originEvent("ch_a", "asia", 2n)), true);
  assert.equal(tracker.accept(originEvent("ch_a", "eu", 4n)), false, "repeat");
  assert.equal(tracker.accept(originEvent("ch_a", "eu", 2n)), false, "older");
  assert.equal(tracker.accept(originEvent("ch_a", "eu", 5n)), true, "eu goes on after asia's");
  assert.equal(tracker.dropped, 3);
  assert.deepEqual(tracker.resumeFromOrigins(), { ch_a: { originSeqs: { eu: 5n, asia: 2n } } });
  assert.deepEqual(tracker.resumeFrom(), {}, "no per-channel seq is made up from origin events");
  assert.equal(tracker.isGap(originEvent("ch_a", "asia", 3n)), false);
  assert.equal(tracker.isGap(originEvent("ch_a", "asia", 5n)), true, "asia 3..4 missing");
  assert.equal(tracker.isGap(originEvent("ch_a", "us-east", 9n)), false, "first sight of an origin");
  // Primary-mode events beside them keep today's rule.
  assert.equal(tracker.accept(event("ch_b", 2n)), true);
  assert.equal(tracker.accept(event("ch_b", 2n)), false);
  assert.equal(tracker.dropped, 4);
});

test("origin positions: track raises only, a leave by the viewer forgets, JSON round trip", () => {
  const tracker = new SeqTracker();
  tracker.trackOrigins("ch_a", { eu: 7n, asia: "2" });
  tracker.trackOrigins("ch_a", new Map([["eu", 5n], ["us-east", 1n]]));
  assert.deepEqual(tracker.getOrigins("ch_a"), new Map([["eu", 7n], ["asia", 2n], ["us-east", 1n]]));
  const stored = encodeOriginPositions(tracker.originPositions());
  assert.deepEqual(decodeOriginPositions(stored), tracker.originPositions());
  assert.deepEqual([...decodeOriginPositions('{"ch_a":{"eu":"3","x":-1},"ch_b":"9"}')], [["ch_a", new Map([["eu", 3n]])]]);
  assert.equal(decodeOriginPositions("{nope").size, 0);
  tracker.accept(originEvent("ch_a", "eu", 8n, { case: "memberLeft", value: { userId: "bob" } }), "bob");
  assert.equal(tracker.getOrigins("ch_a"), undefined);
});

/** Runs a subscription over scripted streams until `count` events were delivered. */
async function followOrigins(scripts, count, resumeFromOrigins) {
  const fake = fakeNotifications(scripts);
  const ctl = new AbortController();
  const seen = [];
  const states = [];
  let asked = 0;
  let enough;
  const done = new Promise((resolve) => (enough = resolve));
  const sub = subscribeWithResume(fake, () => "t.e.s", {
    onEvent: (e) => {
      seen.push(`${e.originRegion}${e.originSeq}`);
      if (seen.length === count) enough();
    },
    onState: (s) => states.push(s),
  }, {
    signal: ctl.signal, resumeFromOrigins, backoff: { initialMs: 1, maxMs: 2 },
    historyLastSeq: async () => {
      asked += 1;
      return 0n;
    },
  });
  let timer;
  try {
    await Promise.race([done, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timeout; seen ${seen}`)), 5000)))]);
  } finally {
    clearTimeout(timer);
    ctl.abort(); // also when it failed: a stuck subscription must not keep the test process alive
    await sub.done.catch(() => undefined);
  }
  return { seen, requests: fake.requests, states, asked, sub };
}

const oev = (channelId, origin, originSeq) => ({ kind: { case: "event", value: originEvent(channelId, origin, originSeq) } });

function originStreamGap(channelId, origin, last, lastMissing) {
  const entry = (k, v) => new BinaryWriter().tag(1, 2).string(k).tag(2, 2).string(v).finish();
  const w = new BinaryWriter().tag(1, 2).string("STREAM_GAP").tag(2, 2).string("chatmesh.dev");
  const meta = [["channel_id", channelId], ["origin_region", origin], ["last_delivered_origin_seq", String(last)],
    ["last_missing_origin_seq", String(lastMissing)]];
  for (const [k, v] of meta) w.tag(3, 2).bytes(entry(k, v));
  const err = new ConnectError("gap", Code.Unavailable);
  err.details = [{ type: "google.rpc.ErrorInfo", value: w.finish() }];
  return err;
}

test("every-region: resumes with resume_from_origins; a STREAM_GAP for an origin resubscribes from its positions at once", async () => {
  const { seen, requests, states, asked, sub } = await followOrigins(
    [
      { items: [live, oev("ch_a", "eu", 3n), oev("ch_a", "asia", 1n)], error: originStreamGap("ch_a", "asia", 1n, 4n) },
      // The replay repeats eu 3 (dropped), fills asia 2..4, then goes on live.
      { items: [oev("ch_a", "eu", 3n), oev("ch_a", "asia", 2n), oev("ch_a", "asia", 3n), oev("ch_a", "asia", 4n), live,
        oev("ch_a", "eu", 4n)], hang: true },
    ],
    6,
    { ch_a: { eu: 2n } },
  );
  assert.deepEqual(seen, ["eu3", "asia1", "asia2", "asia3", "asia4", "eu4"]);
  assert.deepEqual(requests.map((r) => r.resumeFromOrigins), [
    { ch_a: { originSeqs: { eu: 2n } } },
    { ch_a: { originSeqs: { eu: 3n, asia: 1n } } },
  ]);
  assert.deepEqual(requests.map((r) => r.resumeFrom), [{}, {}], "no per-channel seq resume");
  assert.equal(asked, 0, "no waiting on GetHistory's last_seq: the server replays the origin");
  const gap = states.find((s) => s.kind === "gap");
  assert.deepEqual([gap.channelId, gap.originRegion, gap.lastDelivered, gap.want], ["ch_a", "asia", 1n, 4n]);
  assert.equal(sub.dropped(), 1);
});

test("every-region: a jump in one origin's origin_seqs is not delivered; the stream resumes before it", async () => {
  const { seen, requests } = await followOrigins(
    [
      { items: [live, oev("ch_a", "eu", 1n), oev("ch_a", "asia", 1n), oev("ch_a", "asia", 3n)], hang: true },
      { items: [oev("ch_a", "asia", 2n), oev("ch_a", "asia", 3n), live], hang: true },
    ],
    4,
    undefined,
  );
  assert.deepEqual(seen, ["eu1", "asia1", "asia2", "asia3"]);
  assert.deepEqual(requests[1].resumeFromOrigins, { ch_a: { originSeqs: { eu: 1n, asia: 1n } } });
});

// The timeline helper: one channel's messages in (hlc, originRegion, messageId) order.

const HLC_BASE = (1n << 60n) + 1n; // above 2**53: a Number comparison would see ties
/** A message whose seq deliberately contradicts its hlc: ordering by seq would fail these tests. */
const msg = (id, hlc, origin, text = id, extra = {}) => ({
  messageId: id, channelId: "ch_a", hlc: HLC_BASE + hlc, originRegion: origin, text, deleted: false,
  seq: 100n - hlc, originSeq: 1n, senderUserId: "ann", ...extra,
});
const created = (m) => ({ ...originEvent("ch_a", m.originRegion, 1n), hlc: m.hlc, payload: { case: "messageCreated", value: { message: m } } });
const edited = (m, text, hlc, origin, eventId) => ({
  channelId: "ch_a", seq: 0n, originSeq: 1n, originRegion: origin, hlc: HLC_BASE + hlc, eventId,
  payload: { case: "messageEdited", value: { message: { ...m, text } } },
});
const deleted = (m, hlc, origin, eventId) => ({
  channelId: "ch_a", seq: 0n, originSeq: 1n, originRegion: origin, hlc: HLC_BASE + hlc, eventId,
  payload: { case: "messageDeleted", value: { messageId: m.messageId, messageSeq: 0n } },
});
const ids = (timeline) => timeline.messages().map((m) => m.messageId);

test("timeline: a late message is inserted where its hlc puts it, ties by origin then id, never by seq", () => {
  const timeline = new ChannelTimeline();
  assert.equal(timeline.apply(created(msg("msg_b", 2n, "eu"))).kind, "inserted");
  assert.equal(timeline.apply(created(msg("msg_d", 4n, "eu"))).late, false);
  const late = timeline.apply(created(msg("msg_a", 1n, "us-east")));
  assert.deepEqual([late.kind, late.index, late.late], ["inserted", 0, true], "cut-off region's message goes first");
  timeline.apply(created(msg("msg_c2", 3n, "eu")));
  timeline.apply(created(msg("msg_c1", 3n, "asia"))); // same hlc: "asia" < "eu"
  timeline.apply(created(msg("msg_c0", 3n, "eu"))); // same hlc and origin: by id
  assert.deepEqual(ids(timeline), ["msg_a", "msg_b", "msg_c1", "msg_c0", "msg_c2", "msg_d"]);
  // One tick apart above 2**53: still ordered.
  timeline.apply(created(msg("msg_e", 5n, "asia")));
  timeline.apply(created(msg("msg_e0", 4n, "us-east")));
  assert.deepEqual(ids(timeline).slice(-3), ["msg_d", "msg_e0", "msg_e"]);
  assert.equal(compareOrderKeys({ hlc: HLC_BASE, originRegion: "eu", id: "x" }, { hlc: HLC_BASE + 1n, originRegion: "asia", id: "a" }), -1);
});

test("timeline: edits and deletes change a message in place; last edit wins by order key; delete is final", () => {
  const timeline = new ChannelTimeline();
  const a = msg("msg_a", 1n, "eu");
  const b = msg("msg_b", 2n, "asia");
  timeline.apply(created(a));
  timeline.apply(created(b));
  const edit = timeline.apply(edited(a, "v2 (asia)", 10n, "asia", "evt_x"));
  assert.deepEqual([edit.kind, edit.index], ["updated", 0]);
  assert.equal(timeline.apply(edited(a, "v1 (eu, older)", 9n, "us-east", "evt_y")).kind, "ignored", "older edit, arrived late");
  assert.equal(timeline.get("msg_a").text, "v2 (asia)");
  assert.equal(timeline.apply(deleted(b, 3n, "asia", "evt_z")).kind, "updated");
  assert.equal(timeline.apply(edited(b, "back?", 20n, "eu", "evt_w")).kind, "ignored", "an edit never undoes a delete");
  assert.deepEqual(timeline.messages().map((m) => [m.messageId, m.text, m.deleted]), [
    ["msg_a", "v2 (asia)", false],
    ["msg_b", "", true],
  ]);
  // A creation repeated (a replay) does not bring an edited or deleted text back.
  timeline.apply(created(a));
  timeline.addHistory([b]);
  assert.deepEqual(timeline.messages().map((m) => [m.text, m.deleted]), [["v2 (asia)", false], ["", true]]);
});

test("timeline: edits and deletes that arrive before their creation, and a creation repeated in another region", () => {
  const timeline = new ChannelTimeline();
  const a = msg("msg_a", 5n, "eu");
  const b = msg("msg_b", 6n, "eu");
  assert.equal(timeline.apply(edited(a, "edited first", 7n, "asia", "evt_e")).kind, "ignored");
  assert.equal(timeline.apply(deleted(b, 8n, "asia", "evt_d")).kind, "ignored");
  timeline.apply(created(b));
  timeline.apply(created(a));
  assert.deepEqual(timeline.messages().map((m) => [m.messageId, m.text, m.deleted]), [
    ["msg_a", "edited first", false],
    ["msg_b", "", true],
  ]);
  // The same message id created earlier in order (a retry through asia): it moves there.
  const moved = timeline.upsert(msg("msg_b", 1n, "asia", "b"));
  assert.deepEqual([moved.kind, moved.index], ["updated", 0]);
  assert.deepEqual(ids(timeline), ["msg_b", "msg_a"]);
  assert.equal(timeline.upsert(msg("msg_b", 9n, "us-east", "b")).kind, "ignored", "a later copy is dropped");
  assert.equal(timeline.size, 2);
});

test("timeline: every arrival order of the same events ends in the same view", () => {
  const a = msg("msg_a", 1n, "eu");
  const b = msg("msg_b", 2n, "asia");
  const c = msg("msg_c", 2n, "eu");
  const events = [
    created(a), created(b), created(c),
    edited(a, "a2", 3n, "asia", "evt_1"), edited(a, "a3", 4n, "eu", "evt_2"),
    deleted(c, 5n, "asia", "evt_3"), edited(c, "c2", 6n, "eu", "evt_4"),
  ];
  const permutations = (xs) => (xs.length <= 1 ? [xs] : xs.flatMap((x, i) =>
    permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((rest) => [x, ...rest])));
  const views = new Set();
  for (const order of permutations(events)) {
    const timeline = new ChannelTimeline();
    for (const e of order) timeline.apply(e);
    views.add(JSON.stringify(timeline.messages().map((m) => [m.messageId, m.text, m.deleted])));
  }
  assert.deepEqual([...views], [JSON.stringify([["msg_a", "a3", false], ["msg_b", "msg_b", false], ["msg_c", "", true]])]);
});
