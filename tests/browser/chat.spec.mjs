// Two people chatting through the web page in real headless Chromium.
//
// Run by tests/browser/test_web_chat.py (which starts the mesh):
//   node tests/browser/chat.spec.mjs '{"usWeb": "...", "euWeb": "...", "outDir": "...", "chromium": "/usr/bin/chromium", "spkiPin": null}'
// With HTTPS edges, Node's own fetch calls need NODE_EXTRA_CA_CERTS=<the mesh's CA file>.
// Prints one JSON object on stdout ({"ok": true, "checks": {...}, "steps": [...], ...})
// and exits 0 only if every check passed. Every wait is bounded; the whole
// scenario has a hard deadline.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] ?? "{}");
const { usWeb, euWeb, outDir, chromium: executablePath = "/usr/bin/chromium", spkiPin = null } = opts;
const WAIT_MS = opts.waitMs ?? 20_000;
const DEADLINE_MS = opts.deadlineMs ?? 150_000;

const result = { ok: false, checks: {}, steps: [], screenshots: {}, console: { alice: [], bob: [] } };
const started = Date.now();
let stepStart = started;

function step(name) {
  const now = Date.now();
  result.steps.push({ name, ms: now - stepStart });
  stepStart = now;
}

function check(name, ok, detail) {
  result.checks[name] = detail === undefined ? ok : { ok, detail };
  if (!ok) throw new Error(`check failed: ${name} ${JSON.stringify(detail ?? "")}`);
}

async function until(what, fn, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let delay = 25;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeout} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 250);
  }
}

const hardStop = setTimeout(() => {
  result.error = `scenario exceeded its ${DEADLINE_MS} ms deadline`;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(3);
}, DEADLINE_MS);

const suffix = Math.random().toString(36).slice(2, 8);
const alice = `alice-${suffix}`;
const bob = `bob-${suffix}`;
const room = `room-${suffix}`;

async function signIn(page, user, web) {
  await page.goto(web);
  await page.getByLabel("Name", { exact: true }).fill(user);
  // The region picker defaults to the edge that served the page.
  const selected = await page.getByRole("combobox", { name: "Region" }).inputValue();
  check(`${user}: region defaults to own edge`, selected === new URL(web).origin, selected);
  await page.getByRole("button", { name: "Sign in" }).click();
  await connectionLive(page);
}

async function connectionLive(page) {
  await page.getByLabel("Connection status").filter({ hasText: /^live via / }).waitFor({ timeout: WAIT_MS });
}

function messages(page) {
  return page.getByRole("list", { name: "Messages" }).getByRole("listitem");
}

async function expectMessageOnce(page, text) {
  const items = messages(page).filter({ hasText: text });
  await items.first().waitFor({ timeout: WAIT_MS });
  return items.count();
}

function presenceOf(page, user) {
  return page.getByRole("list", { name: "Members" }).locator(`li[data-user="${user}"]`);
}

async function waitPresence(page, user, status) {
  await until(`${user} ${status}`, async () => (await presenceOf(page, user).getAttribute("data-presence")) === status);
}

// Protobuf wire format, just enough for one request and one field of its response:
// the edge speaks Connect with the binary codec (the services speak protobuf only).
function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

function readVarint(bytes, at) {
  let value = 0n;
  let shift = 0n;
  for (;;) {
    const byte = bytes[at++];
    value |= BigInt(byte & 0x7f) << shift;
    shift += 7n;
    if (!(byte & 0x80)) return [value, at];
  }
}

/** GetHistoryRequest{channel_id: 1, limit: 4} as bytes. */
function encodeGetHistory(channelId, limit) {
  const id = new TextEncoder().encode(channelId);
  return new Uint8Array([0x0a, ...varint(id.length), ...id, 0x20, ...varint(limit)]);
}

/** GetHistoryResponse.last_seq (field 3, varint) from its bytes (0 when absent). */
function decodeLastSeq(bytes) {
  let at = 0;
  let last = 0n;
  while (at < bytes.length) {
    let key;
    [key, at] = readVarint(bytes, at);
    const field = key >> 3n;
    const wire = Number(key & 7n);
    if (wire === 0) {
      let value;
      [value, at] = readVarint(bytes, at);
      if (field === 3n) last = value;
    } else if (wire === 2) {
      let length;
      [length, at] = readVarint(bytes, at);
      at += Number(length);
    } else {
      throw new Error(`unexpected wire type ${wire}`);
    }
  }
  return last;
}

/** Polls the eu edge (Connect protocol, binary) until its history holds `seq`: the region has replicated it. */
async function waitRegionHas(web, user, channelId, seq) {
  const base = new URL(web).origin;
  const { token } = await (await fetch(`${base}/dev/token?user=${user}`)).json();
  await until(`eu history reaching seq ${seq}`, async () => {
    const resp = await fetch(`${base}/chatmesh.v1.QueryService/GetHistory`, {
      method: "POST",
      headers: {
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        authorization: `Bearer ${token}`,
      },
      body: encodeGetHistory(channelId, 10),
    });
    return resp.ok && decodeLastSeq(new Uint8Array(await resp.arrayBuffer())) >= BigInt(seq);
  });
}

let browser;
try {
  mkdirSync(outDir, { recursive: true });
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    // playwright-core gives every launch a fresh temporary profile (it refuses
    // --user-data-dir in args), so no state leaks between runs.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // TLS edges (`chatmesh up --tls`): trust exactly the edge certificate's key
      // (its SPKI hash); every other certificate error still fails the page.
      ...(spkiPin ? [`--ignore-certificate-errors-spki-list=${spkiPin}`] : []),
    ],
  });
  result.browserVersion = browser.version();
  const aliceContext = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const bobContext = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const a = await aliceContext.newPage();
  const b = await bobContext.newPage();
  for (const [name, page] of [["alice", a], ["bob", b]]) {
    page.on("console", (msg) => {
      if (msg.type() === "error" || msg.type() === "warning") result.console[name].push(msg.text());
    });
    page.on("pageerror", (err) => result.console[name].push(`pageerror: ${err.message}`));
  }
  step("browser launched");

  await signIn(a, alice, usWeb);
  await signIn(b, bob, euWeb);
  step("alice (us-east) and bob (eu) signed in, streams live");

  // alice creates a channel with bob; bob's stream announces it.
  await a.getByRole("textbox", { name: "Channel name" }).fill(room);
  await a.getByRole("textbox", { name: "Members" }).fill(bob);
  await a.getByRole("button", { name: "Create channel" }).click();
  await a.getByRole("heading", { name: room }).waitFor({ timeout: WAIT_MS });
  const bobRoom = b.getByRole("list", { name: "Channels" }).getByRole("button", { name: new RegExp(`^${room}`) });
  await bobRoom.waitFor({ timeout: WAIT_MS });
  await bobRoom.click();
  await b.getByRole("heading", { name: room }).waitFor({ timeout: WAIT_MS });
  const channelId = await bobRoom.getAttribute("data-channel-id");
  check("channel id", /^ch_[0-9a-z]{26}$/.test(channelId ?? ""), channelId);
  step("channel created by alice, shown to bob");

  await waitPresence(a, bob, "online");
  check("alice sees bob online", true);
  step("presence online");

  // Typing: alice types without sending; bob sees the indicator.
  const composerA = a.getByRole("textbox", { name: "Message", exact: true });
  await composerA.pressSequentially("hello bob", { delay: 20 });
  await b.getByRole("status", { name: "Typing" }).filter({ hasText: `${alice} is typing` }).waitFor({ timeout: WAIT_MS });
  check("bob sees alice typing", true);
  result.screenshots.bobTyping = join(outDir, "bob-sees-typing.png");
  await b.screenshot({ path: result.screenshots.bobTyping });
  step("typing indicator");

  const fromAlice = `hello bob from us-east ${suffix}`;
  await composerA.fill(fromAlice);
  await composerA.press("Enter");
  check("bob gets alice's message once", (await expectMessageOnce(b, fromAlice)) === 1);
  await until("typing indicator cleared", async () => (await b.getByRole("status", { name: "Typing" }).textContent()) === "");
  const fromBob = `hi alice from eu ${suffix}`;
  await b.getByRole("textbox", { name: "Message", exact: true }).fill(fromBob);
  await b.getByRole("button", { name: "Send" }).click();
  check("alice gets bob's message once", (await expectMessageOnce(a, fromBob)) === 1);
  check("bob sees his own message once", (await expectMessageOnce(b, fromBob)) === 1);
  step("messages both ways");

  // bob leaves the page (same tab: its sessionStorage keeps the stream positions).
  const positionsBefore = await b.evaluate(() => ({ ...sessionStorage }));
  await b.goto(new URL("/config.json", euWeb).href);
  await waitPresence(a, bob, "offline");
  check("alice sees bob offline while he is away", true);
  step("bob away, presence offline");

  const away = [`while you were away 1 ${suffix}`, `while you were away 2 ${suffix}`];
  for (const text of away) {
    await composerA.fill(text);
    await composerA.press("Enter");
    await expectMessageOnce(a, text);
  }
  const awaySeqs = [];
  for (const text of away) {
    awaySeqs.push(await messages(a).filter({ hasText: text }).getAttribute("data-seq"));
  }
  // Replication to eu is asynchronous: come back once eu has the messages, as a user would later.
  await waitRegionHas(euWeb, bob, channelId, awaySeqs[1]);
  step("alice sent 2 messages while bob was away; eu replicated them");

  await b.goto(euWeb);
  await connectionLive(b);
  await b.getByRole("heading", { name: room }).waitFor({ timeout: WAIT_MS });
  for (const text of [fromAlice, fromBob, ...away]) {
    check(`bob sees "${text}" exactly once after returning`, (await expectMessageOnce(b, text)) === 1);
  }
  const diag = await b.evaluate(() => window.chatmesh);
  const keys = diag.delivered.map((d) => `${d.channelId}#${d.seq}`);
  check("no channel event delivered twice after resume", new Set(keys).size === keys.length, keys);
  check(
    "the away messages came through the resumed stream",
    awaySeqs.every((seq) => diag.delivered.some((d) => d.channelId === channelId && d.seq === seq)),
    { awaySeqs, delivered: diag.delivered },
  );
  check("the resumed stream replayed them", diag.replays.length > 0 && Number(diag.replays[0].replayed) >= 2, diag.replays);
  check("positions were stored before leaving", Object.keys(positionsBefore).some((k) => k.startsWith("chatmesh:positions:")), Object.keys(positionsBefore));
  result.resume = { awaySeqs, replays: diag.replays, delivered: diag.delivered.length };
  await waitPresence(a, bob, "online");
  step("bob back: resumed, no duplicates, online again");

  // Unread counts: a message in a channel bob does not have open.
  const room2 = `${room}-2`;
  await a.getByRole("textbox", { name: "Channel name" }).fill(room2);
  await a.getByRole("textbox", { name: "Members" }).fill(bob);
  await a.getByRole("button", { name: "Create channel" }).click();
  await a.getByRole("heading", { name: room2 }).waitFor({ timeout: WAIT_MS });
  await composerA.fill(`ping ${suffix}`);
  await composerA.press("Enter");
  await b.getByRole("list", { name: "Channels" }).getByRole("button", { name: `${room2} 1 unread` }).waitFor({ timeout: WAIT_MS });
  check("bob sees 1 unread in the new channel", true);
  await waitPresence(a, bob, "online");
  step("unread count");

  result.screenshots.alice = join(outDir, "alice-us-east.png");
  result.screenshots.bob = join(outDir, "bob-eu.png");
  await a.screenshot({ path: result.screenshots.alice });
  await b.screenshot({ path: result.screenshots.bob });
  step("screenshots");

  await bobContext.close();
  await waitPresence(a, bob, "offline");
  check("alice sees bob offline after his browser context closed", true);
  step("bob's context closed, presence offline");

  await aliceContext.close();
  result.ok = true;
} catch (err) {
  result.error = String(err?.stack ?? err);
  if (browser && outDir) {
    // Best effort: what each page looked like when it failed.
    for (const context of browser.contexts()) {
      for (const [i, page] of context.pages().entries()) {
        const path = join(outDir, `failure-${browser.contexts().indexOf(context)}-${i}.png`);
        try {
          await page.screenshot({ path, timeout: 5_000 });
          result.screenshots[`failure-${browser.contexts().indexOf(context)}-${i}`] = path;
        } catch {
          // the page may be gone
        }
      }
    }
  }
} finally {
  result.totalMs = Date.now() - started;
  await browser?.close().catch(() => undefined);
  clearTimeout(hardStop);
  if (outDir) writeFileSync(join(outDir, "result.json"), JSON.stringify(result, null, 2));
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}
