/**
 * Per-channel stream positions: the last seq delivered in each channel. They
 * are what `resume_from` is built from, and what drops channel events that
 * arrive twice (a replay overlapping what was already delivered) or late.
 *
 * @example
 * ```ts
 * const tracker = new SeqTracker(decodePositions(sessionStorage.getItem("pos")));
 * if (tracker.accept(event)) render(event);
 * sessionStorage.setItem("pos", encodePositions(tracker.positions()));
 * ```
 */
import type { Event } from "../../../gen/ts/chatmesh/v1/events_pb.js";

/** Channel id → last delivered seq. */
export type Positions = ReadonlyMap<string, bigint>;

/** Anything positions can be built from (a Map, or a plain object as stored in JSON). */
export type PositionsInit =
  | Iterable<readonly [string, bigint]>
  | Readonly<Record<string, bigint | number | string>>;

function entries(init: PositionsInit): Iterable<readonly [string, bigint]> {
  if (Symbol.iterator in init) return init as Iterable<readonly [string, bigint]>;
  return Object.entries(init).map(([k, v]) => [k, BigInt(v)] as const);
}

/** Remembers the last seq delivered per channel; decides whether an event is new. */
export class SeqTracker {
  readonly #last = new Map<string, bigint>();

  /** Starts from `initial` positions (e.g. restored from storage). */
  constructor(initial?: PositionsInit) {
    if (initial) for (const [channel, seq] of entries(initial)) this.track(channel, seq);
  }

  /**
   * Whether `event` should be delivered; records it if so.
   *
   * Ephemeral and user events (seq 0) always pass. A channel event passes only
   * if its seq is above the channel's last delivered seq, so nothing is
   * delivered twice or out of order. When the event says the viewer left the
   * channel, pass `viewer` so the channel is forgotten: resuming a channel one
   * is no longer a member of is refused by the server.
   */
  accept(event: Event, viewer?: string): boolean {
    if (event.seq <= 0n || !event.channelId) return true;
    const last = this.#last.get(event.channelId);
    if (last !== undefined && event.seq <= last) return false;
    this.#last.set(event.channelId, event.seq);
    if (
      viewer !== undefined &&
      event.payload.case === "memberLeft" &&
      event.payload.value.userId === viewer
    ) {
      this.#last.delete(event.channelId);
    }
    return true;
  }

  /**
   * Whether `event` lies beyond its channel's next seq (events before it were
   * not delivered). Such an event must not be accepted: the stream resumes
   * before it instead.
   */
  isGap(event: Event): boolean {
    if (event.seq <= 0n || !event.channelId) return false;
    const last = this.#last.get(event.channelId);
    return last !== undefined && event.seq > last + 1n;
  }

  /**
   * Raises a channel's position to `seq` (never lowers it): the caller already
   * has everything up to `seq` (e.g. from GetHistory), so a resumed stream
   * should start after it.
   */
  track(channelId: string, seq: bigint): void {
    const last = this.#last.get(channelId);
    if (seq >= 0n && (last === undefined || seq > last)) this.#last.set(channelId, seq);
  }

  /** Stops tracking a channel (it is left out of the next `resume_from`). */
  forget(channelId: string): void {
    this.#last.delete(channelId);
  }

  /** The last delivered seq of a channel, if tracked. */
  get(channelId: string): bigint | undefined {
    return this.#last.get(channelId);
  }

  /** A copy of every tracked position. */
  positions(): Map<string, bigint> {
    return new Map(this.#last);
  }

  /** The positions as a `SubscribeRequest.resume_from` map. */
  resumeFrom(): Record<string, bigint> {
    return Object.fromEntries(this.#last);
  }
}

/** Positions as JSON (seqs as decimal strings: JSON has no 64-bit integers). */
export function encodePositions(positions: Positions): string {
  return JSON.stringify(Object.fromEntries([...positions].map(([k, v]) => [k, v.toString()])));
}

/** Positions from {@link encodePositions}'s JSON; empty for null or malformed input. */
export function decodePositions(text: string | null | undefined): Map<string, bigint> {
  const result = new Map<string, bigint>();
  if (!text) return result;
  try {
    const raw: unknown = JSON.parse(text);
    if (raw && typeof raw === "object") {
      for (const [channel, seq] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof seq === "string" && /^\d+$/.test(seq)) result.set(channel, BigInt(seq));
      }
    }
  } catch {
    // Storage written by another version, or by hand: start without positions.
  }
  return result;
}

/** Every-region write mode (ADR-026): channel id → origin region → last delivered origin_seq. */
export type OriginPositions = ReadonlyMap<string, ReadonlyMap<string, bigint>>;

/** Anything origin positions can be built from (Maps, or plain objects as stored in JSON). */
export type OriginPositionsInit =
  | Iterable<readonly [string, Iterable<readonly [string, bigint]>]>
  | Readonly<Record<string, Readonly<Record<string, bigint | number | string>>>>;

/**
 * {@link SeqTracker} for the every-region write mode: channel events carry
 * `seq` 0 and an `originSeq` per origin region, so positions, duplicates and
 * gaps are per channel *and* origin. A channel the current connection started
 * live (not in the `resume_from_origins` it was opened with) takes each
 * origin's first event as it comes; in a resumed channel an origin without a
 * position starts at 1, as the server replays it. Across origins, show a
 * channel in (hlc, origin_region, message_id) order.
 *
 * @example
 * ```ts
 * const origins = new OriginTracker({ ch_eu_01j...: { eu: 4n } });
 * if (!origins.isGap(event) && origins.accept(event)) render(event);
 * ```
 */
export class OriginTracker {
  readonly #last = new Map<string, Map<string, bigint>>();
  readonly #open = new Set<string>();

  /** Starts from `initial` positions (e.g. GetHistory's `last_origin_seqs`, or storage). */
  constructor(initial?: OriginPositionsInit) {
    if (!initial) return;
    const channels: Iterable<readonly [string, unknown]> =
      Symbol.iterator in initial
        ? (initial as Iterable<readonly [string, unknown]>)
        : Object.entries(initial);
    for (const [channel, at] of channels) {
      const origins = new Map<string, bigint>();
      const pairs: Iterable<readonly [string, unknown]> =
        typeof at === "object" && at !== null && Symbol.iterator in at
          ? (at as Iterable<readonly [string, unknown]>)
          : Object.entries(at as Record<string, unknown>);
      for (const [origin, n] of pairs) origins.set(origin, BigInt(n as bigint | number | string));
      this.#last.set(channel, origins);
    }
  }

  /** The origin's position to compare against; undefined: its next event is taken as it comes. */
  #position(channelId: string, origin: string): bigint | undefined {
    const at = this.#last.get(channelId);
    if (at === undefined) return undefined;
    const last = at.get(origin);
    if (last === undefined && !this.#open.has(channelId)) return 0n;
    return last;
  }

  /**
   * Whether `event` should be delivered; records it if so. Events without an
   * `originSeq` (ephemeral, user, or the primary mode's) always pass: use a
   * {@link SeqTracker} for the latter.
   */
  accept(event: Event, viewer?: string): boolean {
    if (event.originSeq <= 0n || !event.channelId) return true;
    let at = this.#last.get(event.channelId);
    if (at === undefined) {
      at = new Map();
      this.#last.set(event.channelId, at);
      this.#open.add(event.channelId);
    }
    const last = this.#position(event.channelId, event.originRegion);
    if (last !== undefined && event.originSeq <= last) return false;
    at.set(event.originRegion, event.originSeq);
    if (
      viewer !== undefined &&
      event.payload.case === "memberLeft" &&
      event.payload.value.userId === viewer
    ) {
      this.#last.delete(event.channelId);
      this.#open.delete(event.channelId);
    }
    return true;
  }

  /** Whether `event` lies beyond its origin's next originSeq (it must not be delivered). */
  isGap(event: Event): boolean {
    if (event.originSeq <= 0n || !event.channelId) return false;
    const last = this.#position(event.channelId, event.originRegion);
    return last !== undefined && event.originSeq > last + 1n;
  }

  /** The last delivered originSeq of a channel's origin, if tracked. */
  get(channelId: string, origin: string): bigint | undefined {
    return this.#last.get(channelId)?.get(origin);
  }

  /** Stops tracking a channel. */
  forget(channelId: string): void {
    this.#last.delete(channelId);
    this.#open.delete(channelId);
  }

  /** A copy of every tracked position. */
  positions(): Map<string, Map<string, bigint>> {
    return new Map([...this.#last].map(([ch, at]) => [ch, new Map(at)]));
  }

  /**
   * The positions as a `SubscribeRequest.resume_from_origins` map, for a new
   * connection: from then on every tracked channel counts as resumed.
   */
  resumeFromOrigins(): Record<string, { originSeqs: Record<string, bigint> }> {
    this.#open.clear();
    return Object.fromEntries(
      [...this.#last].map(([ch, at]) => [ch, { originSeqs: Object.fromEntries(at) }]),
    );
  }
}
