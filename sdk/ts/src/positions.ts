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
