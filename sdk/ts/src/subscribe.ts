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
 * Every-region write mode (ADR-026): channel events carry `originSeq` and the
 * rules above hold per channel *and* per origin region; the stream resumes with
 * `resume_from_origins`. After a STREAM_GAP (or a jump in one origin's
 * originSeqs) the subscription resubscribes at once from its per-origin
 * positions: the server replays the missing events from its history. Handlers
 * get each channel's events in per-origin order, not in the channel's display
 * order; {@link ChannelTimeline} puts messages where their hlc belongs.
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
import { SeqTracker, type OriginPositionsInit, type PositionsInit } from "./positions.js";

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
      /**
       * The stream ended at a gap; waiting for the region's history to hold the
       * range (primary mode), or resubscribing from the origin's position
       * (every-region mode: `originRegion` is set and no `regionHas` follows).
       */
      readonly kind: "gap";
      readonly channelId: string;
      /** The origin region whose events are missing (every-region mode). */
      readonly originRegion?: string;
      /** The last seq (or that origin's origin_seq) delivered in that channel. */
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
   * Every-region write mode: channel → origin region → last origin_seq the
   * caller already has (e.g. GetHistory's `lastOriginSeqs`, or restored from
   * storage); sent as `resume_from_origins`.
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
  /** Set for a gap in one origin's events (every-region mode). */
  readonly originRegion?: string;
}

/**
 * Thrown inside a stream that sent an event beyond its channel's next seq. Not a
 * ConnectError subclass: ConnectError's `Symbol.hasInstance` would make every
 * ConnectError an instance of it.
 */
class GapSeen extends Error {
  constructor(readonly gap: Gap) {
    super(
      gap.originRegion === undefined
        ? `the stream jumped past seq ${gap.want} in ${gap.channelId}`
        : `the stream jumped past ${gap.originRegion}'s origin_seq ${gap.want} in ${gap.channelId}`,
    );
  }
}

/**
 * The gap a server's STREAM_GAP ending names, if any. It is an origin's gap
 * (every-region mode) when the metadata names `origin_region`, or when the
 * channel is tracked by origin; the range then only serves the status line.
 */
function gapOf(err: ConnectError, tracker: SeqTracker): Gap | undefined {
  if (errorReason(err) !== "STREAM_GAP") return undefined;
  const meta = errorInfo(err)?.metadata ?? {};
  const channelId = meta["channel_id"];
  if (!channelId) return undefined;
  const number = (key: string): bigint | undefined => {
    const value = meta[key];
    return value && /^\d+$/.test(value) ? BigInt(value) : undefined;
  };
  const originRegion = meta["origin_region"];
  if (originRegion || tracker.getOrigins(channelId) !== undefined) {
    const origin = originRegion ?? "";
    const last = tracker.getOrigins(channelId)?.get(origin) ?? 0n;
    const want = number("last_missing_origin_seq") ?? number("last_missing_seq") ?? last + 1n;
    return { channelId, want, originRegion: origin };
  }
  const want = number("last_missing_seq");
  if (want === undefined) return undefined;
  return { channelId, want };
}

/** A running subscription. */
export interface Subscription {
  /** Resolves when the signal aborts; rejects with the error that stopped it otherwise. */
  readonly done: Promise<void>;
  /** The last delivered seq of every tracked channel (what the next `resume_from` will be). */
  positions(): Map<string, bigint>;
  /** Every-region mode: channel → origin → last delivered origin_seq (the next `resume_from_origins`). */
  originPositions(): Map<string, Map<string, bigint>>;
  /** Raises a channel's position: the caller already has everything up to `seq`. */
  track(channelId: string, seq: bigint): void;
  /** Every-region mode: raises a channel's per-origin positions (e.g. to GetHistory's `lastOriginSeqs`). */
  trackOrigins(channelId: string, originSeqs: PositionsInit): void;
  /** Channel events dropped as at or below their position (0 unless something repeated them). */
  dropped(): number;
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
  const tracker = new SeqTracker(options.resumeFrom, options.resumeFromOrigins);
  const signal = options.signal;
  const firstIdleMs = options.idleTimeoutMs ?? 60_000;

  /** One stream, until it ends or fails. `progress.live` tells whether it went live. */
  async function connectOnce(
    userId: string | undefined,
    progress: { live: boolean; delivered: number },
  ): Promise<void> {
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
        { resumeFrom: tracker.resumeFrom(), resumeFromOrigins: tracker.resumeFromOrigins() },
        { signal: attempt.signal },
      );
      for await (const item of stream) {
        armIdleTimer();
        switch (item.kind.case) {
          case "event": {
            const event = item.kind.value;
            if (tracker.isGap(event)) {
              // Never deliver past a gap: resume before it instead.
              throw new GapSeen(
                event.originSeq > 0n
                  ? { channelId: event.channelId, want: event.originSeq - 1n, originRegion: event.originRegion }
                  : { channelId: event.channelId, want: event.seq - 1n },
              );
            }
            if (tracker.accept(event, userId)) {
              progress.delivered += 1;
              call(handlers.onEvent, event);
            }
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
    if (!lastSeq) return;
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
      const progress = { live: false, delivered: 0 };
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
      gap ??= gapOf(error, tracker);
      if (gap?.originRegion !== undefined) {
        // Every-region mode: the server replays an origin's missing events
        // from its history, so resubscribing from the positions is the fill.
        // Only a stream that brought nothing new waits before the next try.
        call(handlers.onState, {
          kind: "gap",
          channelId: gap.channelId,
          originRegion: gap.originRegion,
          lastDelivered: tracker.getOrigins(gap.channelId)?.get(gap.originRegion) ?? 0n,
          want: gap.want,
        });
        failures = progress.live || progress.delivered > 0 ? 0 : failures + 1;
        if (failures > 0) await sleep(backoffDelay(failures, options.backoff), signal);
        continue;
      }
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
    originPositions: () => tracker.originPositions(),
    track: (channelId, seq) => tracker.track(channelId, seq),
    trackOrigins: (channelId, originSeqs) => tracker.trackOrigins(channelId, originSeqs),
    dropped: () => tracker.dropped,
    forget: (channelId) => tracker.forget(channelId),
  };
}
