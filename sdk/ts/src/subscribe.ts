/**
 * A NotificationService.Subscribe stream that survives disconnects.
 *
 * The server guarantees per-channel order without duplicates *within* one
 * stream; across reconnects the client's `resume_from` makes the next stream
 * replay exactly what the previous one had not delivered. This module keeps
 * those positions ({@link SeqTracker}), reconnects with exponential backoff,
 * and drops anything at or below a channel's last delivered seq, so handlers
 * see every channel event once and in order, whatever the network does.
 *
 * A stream counts as dead when nothing (not even a heartbeat) arrived within
 * the heartbeat's `timeout_ms` (or `idleTimeoutMs` before the first heartbeat).
 * UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND and
 * UNIMPLEMENTED are fatal: the subscription stops and `done` rejects.
 *
 * Gaps: the server never skips a channel's events; when it cannot find the next
 * ones in time it ends the stream with UNAVAILABLE (`STREAM_GAP`, ErrorInfo
 * metadata `channel_id`, `last_delivered_seq`, `last_missing_seq`). An event
 * beyond a channel's next seq (which a server should never send) is treated the
 * same way and not delivered. The subscription then asks GetHistory
 * (`historyLastSeq`) until the region holds the missing range, and resumes from
 * the last delivered seq: the replay brings the range as events, in order.
 *
 * Every-region write mode (ADR-026): events carrying `originSeq` are tracked per
 * channel and origin region ({@link OriginTracker}) and the stream resumes with
 * `resume_from_origins`; a gap of one origin (STREAM_GAP naming `origin_region`,
 * or a jump seen here) resumes at once from the positions, and the server
 * replays the range. Across origins, show a channel in (hlc, origin_region,
 * message_id) order.
 */
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { Event } from "../../../gen/ts/chatmesh/v1/events_pb.js";
import type {
  Heartbeat,
  NotificationService,
  ReplayComplete,
} from "../../../gen/ts/chatmesh/v1/notification_service_pb.js";
import { backoffDelay, sleep, type BackoffOptions } from "./backoff.js";
import { errorInfo, errorReason, isFatal } from "./errors.js";
import { OriginTracker, SeqTracker, type OriginPositionsInit, type PositionsInit } from "./positions.js";

/** Where a subscription is. */
export type StreamState =
  | { readonly kind: "connecting"; readonly attempt: number }
  | {
      readonly kind: "live";
      /** Region of the notification instance serving the stream. */
      readonly region: string;
      readonly instanceId: string;
      /** Channel events the server replayed from `resume_from` before going live. */
      readonly replayed: bigint;
    }
  | {
      readonly kind: "retrying";
      /** Failed attempts in a row (1 after the first failure). */
      readonly attempt: number;
      readonly delayMs: number;
      readonly error: ConnectError;
    }
  | {
      /** The stream ended at a gap; waiting for the region's history to hold the range. */
      readonly kind: "gap";
      readonly channelId: string;
      /** The last seq delivered in that channel. */
      readonly lastDelivered: bigint;
      /** The newest seq the region holds (from GetHistory), once known. */
      readonly regionHas?: bigint;
      /** The end of the missing range. */
      readonly want: bigint;
    }
  | { readonly kind: "stopped"; readonly error?: ConnectError };

/** Callbacks of {@link subscribe}; they run synchronously, in stream order. */
export interface SubscribeHandlers {
  /** Every event: channel events once each and in seq order per channel; ephemeral ones as they come. */
  readonly onEvent?: (event: Event) => void;
  /** The replay requested by `resume_from` is over; what follows is live. Once per (re)connection. */
  readonly onReplayComplete?: (info: ReplayComplete) => void;
  /** The idle stream's keep-alive. */
  readonly onHeartbeat?: (beat: Heartbeat) => void;
  /** Connection state changes (for a status line). */
  readonly onState?: (state: StreamState) => void;
}

/** Options of {@link subscribe}. */
export interface SubscribeOptions {
  /** Aborting it ends the subscription (`done` resolves). */
  readonly signal?: AbortSignal;
  /** Where to start: channel → last seq the caller already has (e.g. restored from storage). */
  readonly resumeFrom?: PositionsInit;
  /**
   * Every-region write mode: channel → origin region → last originSeq the caller
   * already has (e.g. GetHistory's `lastOriginSeqs`); the server replays each origin after it.
   */
  readonly resumeFromOrigins?: OriginPositionsInit;
  /** Reconnection delays. */
  readonly backoff?: BackoffOptions;
  /** How long to wait for the first item of a stream before reconnecting (ms, default 60 000). */
  readonly idleTimeoutMs?: number;
  /**
   * The subscribing user, so that channels they leave stop being resumed
   * (default: the `sub` of the token). Resuming a channel one left is refused.
   */
  readonly userId?: string;
  /**
   * The newest seq of a channel the region holds (GetHistory's `last_seq` for
   * `afterSeq`); after a gap the stream resumes once it covers the range.
   * `ChatClient.subscribe` supplies it; without it the stream resumes at once.
   */
  readonly historyLastSeq?: (channelId: string, afterSeq: bigint) => Promise<bigint>;
  /** How long to wait for the region to hold a gap's range before resuming anyway (ms, default 60 000). */
  readonly gapPatienceMs?: number;
}

/** What a stream could not deliver. */
interface Gap {
  readonly channelId: string;
  readonly want: bigint;
  /** Every-region mode: the origin region whose originSeqs are missing (`want` is one). */
  readonly originRegion?: string;
}

/**
 * Thrown inside a stream that sent an event beyond its channel's next seq. Not a
 * ConnectError subclass: ConnectError's `Symbol.hasInstance` would make every
 * ConnectError an instance of it.
 */
class GapSeen extends Error {
  constructor(readonly gap: Gap) {
    super(`the stream jumped past seq ${gap.want} in ${gap.channelId}`);
  }
}

/** The gap a server's STREAM_GAP ending names, if any. */
function gapOf(err: ConnectError): Gap | undefined {
  if (errorReason(err) !== "STREAM_GAP") return undefined;
  const meta = errorInfo(err)?.metadata ?? {};
  const channelId = meta["channel_id"];
  const originRegion = meta["origin_region"];
  if (channelId && originRegion) {
    const upTo = meta["last_missing_origin_seq"] ?? "0";
    return { channelId, originRegion, want: /^\d+$/.test(upTo) ? BigInt(upTo) : 0n };
  }
  const want = meta["last_missing_seq"];
  if (!channelId || !want || !/^\d+$/.test(want)) return undefined;
  return { channelId, want: BigInt(want) };
}

/** A running subscription. */
export interface Subscription {
  /** Resolves when the signal aborts; rejects with the error that stopped it otherwise. */
  readonly done: Promise<void>;
  /** The last delivered seq of every tracked channel (what the next `resume_from` will be). */
  positions(): Map<string, bigint>;
  /** Every-region mode: the last delivered originSeq per channel and origin region. */
  originPositions(): Map<string, Map<string, bigint>>;
  /** Raises a channel's position: the caller already has everything up to `seq`. */
  track(channelId: string, seq: bigint): void;
  /** Stops resuming a channel. */
  forget(channelId: string): void;
}

/** A handler threw: that is a bug in the application, so the subscription stops with it. */
class HandlerError extends Error {
  constructor(readonly original: unknown) {
    super("a subscription handler threw", { cause: original });
  }
}

function call<T>(handler: ((value: T) => void) | undefined, value: T): void {
  if (!handler) return;
  try {
    handler(value);
  } catch (err) {
    throw new HandlerError(err);
  }
}

/** The `sub` claim of a JWT (not verified: only used to recognise one's own events). */
export function tokenSubject(token: string): string | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims: unknown = JSON.parse(json);
    const sub = (claims as { sub?: unknown }).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Subscribes and keeps the stream going until `options.signal` aborts or a
 * fatal error occurs. Used by `ChatClient.subscribe`.
 */
export function subscribeWithResume(
  notifications: Client<typeof NotificationService>,
  token: () => string | Promise<string>,
  handlers: SubscribeHandlers,
  options: SubscribeOptions = {},
): Subscription {
  const tracker = new SeqTracker(options.resumeFrom);
  const origins = new OriginTracker(options.resumeFromOrigins);
  const signal = options.signal;
  const firstIdleMs = options.idleTimeoutMs ?? 60_000;

  /** One stream, until it ends or fails. `progress.live` tells whether it went live. */
  async function connectOnce(userId: string | undefined, progress: { live: boolean }): Promise<void> {
    const attempt = new AbortController();
    let idleMs = firstIdleMs;
    let idleExpired = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const armIdleTimer = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        idleExpired = true;
        attempt.abort();
      }, idleMs);
    };
    const stop = (): void => attempt.abort();
    signal?.addEventListener("abort", stop, { once: true });
    armIdleTimer();
    try {
      const stream = notifications.subscribe(
        { resumeFrom: tracker.resumeFrom(), resumeFromOrigins: origins.resumeFromOrigins() },
        { signal: attempt.signal },
      );
      for await (const item of stream) {
        armIdleTimer();
        switch (item.kind.case) {
          case "event": {
            const event = item.kind.value;
            if (event.originSeq > 0n) {
              if (origins.isGap(event)) {
                throw new GapSeen({
                  channelId: event.channelId,
                  originRegion: event.originRegion,
                  want: event.originSeq - 1n,
                });
              }
              if (origins.accept(event, userId)) call(handlers.onEvent, event);
              break;
            }
            if (tracker.isGap(event)) {
              // Never deliver past a gap: resume before it instead.
              throw new GapSeen({ channelId: event.channelId, want: event.seq - 1n });
            }
            if (tracker.accept(event, userId)) call(handlers.onEvent, event);
            break;
          }
          case "heartbeat":
            // The server says how long silence may last before the stream is dead.
            if (item.kind.value.timeoutMs > 0n) idleMs = Number(item.kind.value.timeoutMs);
            armIdleTimer();
            call(handlers.onHeartbeat, item.kind.value);
            break;
          case "replayComplete": {
            const info = item.kind.value;
            progress.live = true;
            call(handlers.onState, {
              kind: "live",
              region: info.region,
              instanceId: info.instanceId,
              replayed: info.replayedEvents,
            });
            call(handlers.onReplayComplete, info);
            break;
          }
          default:
            break; // a kind newer than this client: ignore it
        }
      }
    } catch (err) {
      if (err instanceof GapSeen || err instanceof HandlerError) throw err;
      if (idleExpired && !signal?.aborted) {
        throw new ConnectError(`nothing arrived for ${idleMs} ms`, Code.DeadlineExceeded);
      }
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", stop);
    }
  }

  /** Waits (bounded) until the region's history holds `gap`'s range. */
  async function awaitRange(gap: Gap): Promise<void> {
    const lastSeq = options.historyLastSeq;
    // A gap of one origin: resume at once from the positions; the server fills it
    // (from its history or its region's stream) before it sends anything after it.
    if (!lastSeq || gap.originRegion !== undefined) return;
    const deadline = Date.now() + (options.gapPatienceMs ?? 60_000);
    let delayMs = 200;
    while (!signal?.aborted) {
      const lastDelivered = tracker.get(gap.channelId) ?? 0n;
      let has: bigint;
      try {
        has = await lastSeq(gap.channelId, lastDelivered);
      } catch {
        return; // the resumed stream waits on the server side as well
      }
      call(handlers.onState, {
        kind: "gap", channelId: gap.channelId, lastDelivered, regionHas: has, want: gap.want,
      });
      if (has >= gap.want || Date.now() + delayMs > deadline) return;
      await sleep(delayMs, signal);
      delayMs = Math.min(delayMs * 2, 2000);
    }
  }

  async function run(): Promise<void> {
    let failures = 0;
    while (!signal?.aborted) {
      call(handlers.onState, { kind: "connecting", attempt: failures + 1 });
      const progress = { live: false };
      let error: ConnectError;
      let gap: Gap | undefined;
      try {
        const userId = options.userId ?? tokenSubject(await token());
        await connectOnce(userId, progress);
        error = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        if (err instanceof HandlerError) {
          handlers.onState?.({ kind: "stopped", error: ConnectError.from(err.original) });
          throw err.original;
        }
        if (signal?.aborted) break;
        if (err instanceof GapSeen) {
          gap = err.gap;
          error = new ConnectError(err.message, Code.Unavailable);
        } else {
          error = ConnectError.from(err);
        }
      }
      if (isFatal(error)) {
        handlers.onState?.({ kind: "stopped", error });
        throw error;
      }
      gap ??= gapOf(error);
      if (gap) {
        await awaitRange(gap);
        failures = 0; // nothing is wrong with the connection: resume at once
        continue;
      }
      // A stream that went live was healthy: start the backoff over.
      failures = progress.live ? 1 : failures + 1;
      const delayMs = backoffDelay(failures, options.backoff);
      call(handlers.onState, { kind: "retrying", attempt: failures, delayMs, error });
      await sleep(delayMs, signal);
    }
    handlers.onState?.({ kind: "stopped" });
  }

  const done = run().catch((err: unknown) => {
    throw err instanceof HandlerError ? err.original : err;
  });
  // The caller may never look at `done`; its rejection must not become an
  // "unhandled rejection" (which ends a Node process). Awaiting it still rejects.
  done.catch(() => undefined);
  return {
    done,
    positions: () => tracker.positions(),
    originPositions: () => origins.positions(),
    track: (channelId, seq) => tracker.track(channelId, seq),
    forget: (channelId) => tracker.forget(channelId),
  };
}
