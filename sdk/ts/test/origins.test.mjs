// The every-region write mode (ADR-026): positions per channel and origin region (no server).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError, OriginTracker, subscribeWithResume } from "../../../build/sdk-ts/index.mjs";

const msg = (channelId, originRegion, originSeq, payload = { case: "messageCreated", value: {} }) => ({
  channelId, originRegion, originSeq, seq: 0n, payload,
});

test("each origin of a channel is delivered once, in originSeq order", () => {
  const tracker = new OriginTracker({ ch_a: { eu: 2n } });
  const verdicts = [["eu", 2n], ["eu", 3n], ["asia", 1n], ["asia", 1n], ["us-east", 2n]].map(
    ([o, n]) => [tracker.isGap(msg("ch_a", o, n)), tracker.accept(msg("ch_a", o, n))],
  );
  // eu 2: seen; eu 3: new; asia 1: new (a resumed channel starts an origin at 1); us-east 2: a gap.
  assert.deepEqual(verdicts.map(([gap, ok]) => (gap ? "gap" : ok ? "new" : "dup")),
    ["dup", "new", "new", "dup", "gap"]);
  assert.deepEqual(tracker.resumeFromOrigins(), { ch_a: { originSeqs: { eu: 3n, asia: 1n, "us-east": 2n } } });
});

test("a channel started live takes each origin's first event, until the next connection", () => {
  const tracker = new OriginTracker();
  assert.equal(tracker.isGap(msg("ch_b", "asia", 7n)), false);
  assert.equal(tracker.accept(msg("ch_b", "asia", 7n)), true);
  assert.equal(tracker.isGap(msg("ch_b", "eu", 4n)), false);
  tracker.accept(msg("ch_b", "eu", 4n));
  tracker.resumeFromOrigins(); // a new connection resumes the channel from these positions
  assert.equal(tracker.isGap(msg("ch_b", "us-east", 2n)), true);
  assert.equal(tracker.accept(msg("ch_b", "eu", 4n)), false);
});

test("an event beyond its origin's next is not delivered: the stream resumes with resume_from_origins", async () => {
  const calls = [];
  const scripts = [
    [msg("ch_a", "eu", 1n), msg("ch_a", "asia", 1n), msg("ch_a", "eu", 4n)],
    [msg("ch_a", "eu", 2n), msg("ch_a", "eu", 3n), msg("ch_a", "eu", 4n)],
  ];
  const fake = {
    subscribe(request, { signal }) {
      calls.push(request.resumeFromOrigins);
      const items = scripts.shift() ?? [];
      return (async function* () {
        for (const value of items) yield { kind: { case: "event", value } };
        await new Promise((_, reject) => {
          const stop = () => reject(new ConnectError("aborted", Code.Canceled));
          if (signal.aborted) stop();
          else signal.addEventListener("abort", stop);
        });
      })();
    },
  };
  const ctl = new AbortController();
  const seen = [];
  let enough;
  const done = new Promise((resolve) => (enough = resolve));
  const sub = subscribeWithResume(fake, () => "t.e.s", {
    onEvent: (e) => {
      seen.push(`${e.originRegion}${e.originSeq}`);
      if (seen.length === 5) enough();
    },
  }, { signal: ctl.signal, resumeFromOrigins: { ch_a: {} }, backoff: { initialMs: 1, maxMs: 2 } });
  let timer;
  await Promise.race([done, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("timeout")), 5000)))]);
  clearTimeout(timer);
  ctl.abort();
  await sub.done;
  assert.deepEqual(seen, ["eu1", "asia1", "eu2", "eu3", "eu4"]);
  assert.deepEqual(calls, [{ ch_a: { originSeqs: {} } }, { ch_a: { originSeqs: { eu: 1n, asia: 1n } } }]);
  assert.deepEqual(sub.originPositions(), new Map([["ch_a", new Map([["eu", 4n], ["asia", 1n]])]]));
});
