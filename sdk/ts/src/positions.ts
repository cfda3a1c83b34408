/**
 * Per-channel stream positions: the last seq delivered in each channel. They
 * are what `resume_from` is built from, and what drops channel events that
 * arrive twice (a replay overlapping what was already delivered) or late.
 *
 * In the every-region write mode (ADR-026) channel events carry `originSeq`
 * (their position among their origin region's events of the channel) and
 * `seq` 0: the same rules then hold per channel *and* per origin region, and
 * the positions go into `resume_from_origins` instead. Events with
 * `originSeq` 0 follow the per-channel seq rules exactly as before.
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

/** Channel id → origin region → last delivered origin_seq (every-region mode). */
export type OriginPositions = ReadonlyMap<string, ReadonlyMap<string, bigint>>;

/** Anything origin positions can be built from (Maps, or plain objects as stored in JSON). */
export type OriginPositionsInit =
  | Iterable<readonly [string, PositionsInit]>
  | Readonly<Record<string, PositionsInit>>;

function originEntries(init: OriginPositionsInit): Iterable<readonly [string, PositionsInit]> {
  if (Symbol.iterator in init) return init as Iterable<readonly [string, PositionsInit]>;
  return Object.entries(init);
}

/** A `SubscribeRequest.resume_from_origins` map (channel → `OriginPositions` init). */
export type ResumeFromOrigins = Record<string, { originSeqs: Record<string, bigint> }>;

/** Remembers the last seq delivered per channel (and per origin); decides whether an event is new. */
export class SeqTracker {
  readonly #last = new Map<string, bigint>();
  readonly #origins = new Map<string, Map<string, bigint>>();
  #dropped = 0;

  /**
   * Starts from `initial` positions (e.g. restored from storage) and, in the
   * every-region mode, `initialOrigins` (channel → origin → origin_seq).
   */
  constructor(initial?: PositionsInit, initialOrigins?: OriginPositionsInit) {
    if (initial) for (const [channel, seq] of entries(initial)) this.track(channel, seq);
    if (initialOrigins) {
      for (const [channel, seqs] of originEntries(initialOrigins)) this.trackOrigins(channel, seqs);
    }
  }

  /**
   * Channel events dropped as at or below their position (per channel, or per
   * channel and origin). The server replays strictly after the resume position,
   * so this stays 0 unless something repeats or reorders events.
   */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Whether `event` should be delivered; records it if so.
   *
   * Ephemeral and user events (seq 0, originSeq 0) always pass. A channel
   * event passes only if its seq is above the channel's last delivered seq, so
   * nothing is delivered twice or out of order. An event stamped by its origin
   * region (`originSeq` > 0, every-region mode) passes only if its originSeq is
   * above the last one delivered from that origin in that channel. A dropped
   * event is counted ({@link dropped}). When the event says the viewer left
   * the channel, pass `viewer` so the channel is forgotten: resuming a channel
   * one is no longer a member of is refused by the server.
   */
  accept(event: Event, viewer?: string): boolean {
    if (event.originSeq > 0n && event.channelId) return this.#acceptOrigin(event, viewer);
    if (event.seq <= 0n || !event.channelId) return true;
    const last = this.#last.get(event.channelId);
    if (last !== undefined && event.seq <= last) {
      this.#dropped += 1;
      return false;
    }
    this.#last.set(event.channelId, event.seq);
    if (leftBy(event, viewer)) this.#last.delete(event.channelId);
    return true;
  }

  /** {@link accept} for an event stamped by its origin region: the same rule per (channel, origin). */
  #acceptOrigin(event: Event, viewer: string | undefined): boolean {
    const seqs = this.#origins.get(event.channelId);
    const last = seqs?.get(event.originRegion);
    if (last !== undefined && event.originSeq <= last) {
      this.#dropped += 1;
      return false;
    }
    if (seqs) seqs.set(event.originRegion, event.originSeq);
    else this.#origins.set(event.channelId, new Map([[event.originRegion, event.originSeq]]));
    if (leftBy(event, viewer)) this.#origins.delete(event.channelId);
    return true;
  }

  /**
   * Whether `event` lies beyond its channel's next seq (events before it were
   * not delivered). Such an event must not be accepted: the stream resumes
   * before it instead.
   */
  isGap(event: Event): boolean {
    if (event.originSeq > 0n && event.channelId) {
      // As for a channel's first event: an origin first seen is no gap (its
      // earlier events may predate what the caller reads).
      const last = this.#origins.get(event.channelId)?.get(event.originRegion);
      return last !== undefined && event.originSeq > last + 1n;
    }
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

  /**
   * Raises a channel's per-origin positions (never lowers one): the caller
   * already has each origin's events up to its origin_seq, e.g. from
   * GetHistory's `last_origin_seqs`. Every-region mode.
   */
  trackOrigins(channelId: string, originSeqs: PositionsInit): void {
    let seqs = this.#origins.get(channelId);
    for (const [origin, seq] of entries(originSeqs)) {
      if (seq < 0n) continue;
      if (!seqs) this.#origins.set(channelId, (seqs = new Map()));
      const last = seqs.get(origin);
      if (last === undefined || seq > last) seqs.set(origin, seq);
    }
  }

  /** Stops tracking a channel (it is left out of the next `resume_from` and `resume_from_origins`). */
  forget(channelId: string): void {
    this.#last.delete(channelId);
    this.#origins.delete(channelId);
  }

  /** The last delivered origin_seq of each origin of a channel, if tracked (every-region mode). */
  getOrigins(channelId: string): Map<string, bigint> | undefined {
    const seqs = this.#origins.get(channelId);
    return seqs ? new Map(seqs) : undefined;
  }

  /** A copy of every tracked per-origin position (every-region mode). */
  originPositions(): Map<string, Map<string, bigint>> {
    return new Map([...this.#origins].map(([channel, seqs]) => [channel, new Map(seqs)]));
  }

  /** The per-origin positions as a `SubscribeRequest.resume_from_origins` map. */
  resumeFromOrigins(): ResumeFromOrigins {
    return Object.fromEntries(
      [...this.#origins].map(([channel, seqs]) => [channel, { originSeqs: Object.fromEntries(seqs) }]),
    );
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

/** Whether `event` says `viewer` left its channel (resuming it would be refused). */
function leftBy(event: Event, viewer: string | undefined): boolean {
  return (
    viewer !== undefined && event.payload.case === "memberLeft" && event.payload.value.userId === viewer
  );
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

/** Per-origin positions as JSON (`{channel: {origin: "seq"}}`, seqs as decimal strings). */
export function encodeOriginPositions(positions: OriginPositions): string {
  return JSON.stringify(
    Object.fromEntries(
      [...positions].map(([channel, seqs]) => [
        channel,
        Object.fromEntries([...seqs].map(([origin, seq]) => [origin, seq.toString()])),
      ]),
    ),
  );
}

/** Per-origin positions from {@link encodeOriginPositions}'s JSON; malformed entries are left out. */
export function decodeOriginPositions(text: string | null | undefined): Map<string, Map<string, bigint>> {
  const result = new Map<string, Map<string, bigint>>();
  if (!text) return result;
  try {
    const raw: unknown = JSON.parse(text);
    if (!raw || typeof raw !== "object") return result;
    for (const [channel, seqs] of Object.entries(raw as Record<string, unknown>)) {
      if (!seqs || typeof seqs !== "object") continue;
      const kept = new Map<string, bigint>();
      for (const [origin, seq] of Object.entries(seqs as Record<string, unknown>)) {
        if (typeof seq === "string" && /^\d+$/.test(seq)) kept.set(origin, BigInt(seq));
      }
      if (kept.size > 0) result.set(channel, kept);
    }
  } catch {
    // Storage written by another version, or by hand: start without positions.
  }
  return result;
}
