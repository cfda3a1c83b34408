/**
 * One channel's messages in the every-region write mode's order (ADR-026):
 * `(hlc, originRegion, messageId)`, the order every region's GetHistory shows.
 * A message from a region that was cut off arrives late and is inserted where
 * its timestamp puts it, not at the end; edits and deletes change a message in
 * place. The rules are the server's (`mesh/core/convergence.py`), so a view fed
 * the same events in any order ends the same:
 *
 * - edits: the last writer by the edit event's `(hlc, originRegion, eventId)` wins;
 * - a delete is final: it beats every edit, older or newer, and the text is gone;
 * - the same message id created twice (a retry through another region) is one
 *   message, kept at the creation first in order.
 *
 * `hlc` is a uint64 (a bigint in protobuf-es): keys are compared as bigints.
 * In the primary write mode (hlc 0) messages are ordered by `seq` instead; use
 * this only for channels whose messages carry an hlc.
 *
 * @example
 * ```ts
 * const timeline = new ChannelTimeline();
 * timeline.addHistory(page.messages);          // GetHistory, any page, any order
 * const change = timeline.apply(event);        // a stream event of this channel
 * if (change.kind !== "ignored") render(timeline.messages());
 * ```
 */
import type { Event } from "../../../gen/ts/chatmesh/v1/events_pb.js";
import type { Message } from "../../../gen/ts/chatmesh/v1/message_pb.js";
import type { Timestamp } from "@bufbuild/protobuf/wkt";

/** Where a message sits: `(hlc, originRegion, messageId)`. */
export interface OrderKey {
  readonly hlc: bigint;
  readonly originRegion: string;
  readonly id: string;
}

/** The order key of a message (of its creation). */
export function messageOrderKey(message: Message): OrderKey {
  return { hlc: message.hlc, originRegion: message.originRegion, id: message.messageId };
}

/** The order key of an event (`id` is its event id). */
export function eventOrderKey(event: Event): OrderKey {
  return { hlc: event.hlc, originRegion: event.originRegion, id: event.eventId };
}

function cmpString(a: string, b: string): number {
  // Code-unit order, as Python compares `str` of ASCII ids and region names.
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Negative, zero or positive as `a` sorts before, with or after `b`. */
export function compareOrderKeys(a: OrderKey, b: OrderKey): number {
  if (a.hlc !== b.hlc) return a.hlc < b.hlc ? -1 : 1;
  return cmpString(a.originRegion, b.originRegion) || cmpString(a.id, b.id);
}

/** What {@link ChannelTimeline.apply} or {@link ChannelTimeline.upsert} did. */
export type TimelineChange =
  | {
      /** A new message at `index`; `late` when newer messages were already there. */
      readonly kind: "inserted";
      readonly index: number;
      readonly late: boolean;
      readonly message: Message;
    }
  | {
      /** A known message changed in place (edited, deleted, or moved to an earlier creation). */
      readonly kind: "updated";
      readonly index: number;
      readonly message: Message;
    }
  | {
      /** Nothing to show: a repeat, an edit older than the current text, an edit of a deleted
       * message, a non-message event, or an edit/delete waiting for its message's creation. */
      readonly kind: "ignored";
    };

interface Entry {
  message: Message;
  key: OrderKey;
  /** The edit that decided the text (undefined: the creation's, or unknown from history). */
  lastEdit?: OrderKey;
}

const IGNORED: TimelineChange = { kind: "ignored" };

/** One channel's messages in `(hlc, originRegion, messageId)` order, with late inserts. */
export class ChannelTimeline {
  readonly #entries: Entry[] = [];
  readonly #byId = new Map<string, Entry>();
  /** Deletes that arrived before their message's creation (a delete is final). */
  readonly #deletedEarly = new Set<string>();
  /** Edits that arrived before their message's creation, newest by order key. */
  readonly #editedEarly = new Map<string, { message: Message; key: OrderKey }>();

  /** How many messages the timeline holds. */
  get size(): number {
    return this.#entries.length;
  }

  /** The messages in order (a new array; the messages are the timeline's own). */
  messages(): Message[] {
    return this.#entries.map((e) => e.message);
  }

  /** A message by id, if held. */
  get(messageId: string): Message | undefined {
    return this.#byId.get(messageId)?.message;
  }

  /** The position of a message, or -1. */
  indexOf(messageId: string): number {
    const entry = this.#byId.get(messageId);
    return entry ? this.#entries.indexOf(entry) : -1;
  }

  /** The newest message by order key. */
  last(): Message | undefined {
    return this.#entries.at(-1)?.message;
  }

  /**
   * Applies one stream event of the channel: message created, edited or
   * deleted (anything else is ignored).
   */
  apply(event: Event): TimelineChange {
    const payload = event.payload;
    switch (payload.case) {
      case "messageCreated":
        return payload.value.message ? this.upsert(payload.value.message) : IGNORED;
      case "messageEdited":
        return payload.value.message ? this.#edit(payload.value.message, eventOrderKey(event)) : IGNORED;
      case "messageDeleted":
        return this.delete(payload.value.messageId);
      default:
        return IGNORED;
    }
  }

  /** Messages from GetHistory (any page, in any order): each is inserted or merged. */
  addHistory(messages: Iterable<Message>): void {
    for (const message of messages) this.upsert(message);
  }

  /**
   * A message as a creation (or a GetHistory row, or a SendMessage answer)
   * shows it. A new id is inserted at its key; a known one keeps the state it
   * has (edits and deletes already applied win over a creation's text), takes
   * a deletion the copy shows, and moves if this copy's creation sorts first.
   */
  upsert(message: Message): TimelineChange {
    const known = this.#byId.get(message.messageId);
    if (!known) {
      const entry: Entry = { message: { ...message }, key: messageOrderKey(message) };
      const early = this.#editedEarly.get(message.messageId);
      if (early) {
        entry.message.text = early.message.text;
        if (early.message.editedAt) entry.message.editedAt = early.message.editedAt;
        entry.lastEdit = early.key;
        this.#editedEarly.delete(message.messageId);
      }
      if (this.#deletedEarly.delete(message.messageId)) tombstone(entry.message);
      return this.#insert(entry);
    }
    let changed = false;
    const key = messageOrderKey(message);
    if (compareOrderKeys(key, known.key) < 0) {
      // The same message created again earlier in order (a retry through
      // another region): it sits at the first creation.
      this.#remove(known);
      known.key = key;
      known.message.hlc = message.hlc;
      known.message.originRegion = message.originRegion;
      known.message.originSeq = message.originSeq;
      this.#place(known);
      changed = true;
    }
    if (message.deleted && !known.message.deleted) {
      tombstone(known.message);
      changed = true;
    } else if (
      !known.message.deleted &&
      known.lastEdit === undefined &&
      message.editedAt !== undefined &&
      (known.message.editedAt === undefined || later(message.editedAt, known.message.editedAt))
    ) {
      // No edit event applied yet: a GetHistory row shows a later edit's text.
      // (A creation never carries editedAt, so it never undoes an edit.)
      known.message.text = message.text;
      known.message.editedAt = message.editedAt;
      changed = true;
    }
    return changed ? { kind: "updated", index: this.#entries.indexOf(known), message: known.message } : IGNORED;
  }

  /** Deletes a message for good (a tombstone stays in place, as in GetHistory). */
  delete(messageId: string): TimelineChange {
    const known = this.#byId.get(messageId);
    if (!known) {
      this.#deletedEarly.add(messageId);
      this.#editedEarly.delete(messageId);
      return IGNORED;
    }
    if (known.message.deleted) return IGNORED;
    tombstone(known.message);
    return { kind: "updated", index: this.#entries.indexOf(known), message: known.message };
  }

  #edit(message: Message, key: OrderKey): TimelineChange {
    const id = message.messageId;
    if (this.#deletedEarly.has(id)) return IGNORED;
    const known = this.#byId.get(id);
    if (!known) {
      // The creation has not arrived yet (another origin's stream is behind):
      // keep the newest edit for it.
      const early = this.#editedEarly.get(id);
      if (!early || compareOrderKeys(key, early.key) > 0) this.#editedEarly.set(id, { message, key });
      return IGNORED;
    }
    if (known.message.deleted) return IGNORED;
    if (known.lastEdit !== undefined && compareOrderKeys(key, known.lastEdit) <= 0) return IGNORED;
    known.lastEdit = key;
    known.message.text = message.text;
    if (message.editedAt) known.message.editedAt = message.editedAt;
    return { kind: "updated", index: this.#entries.indexOf(known), message: known.message };
  }

  #insert(entry: Entry): TimelineChange {
    const index = this.#place(entry);
    return { kind: "inserted", index, late: index < this.#entries.length - 1, message: entry.message };
  }

  /** Puts `entry` at its key (binary search: late inserts are usually near the end). */
  #place(entry: Entry): number {
    let lo = 0;
    let hi = this.#entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const other = this.#entries[mid];
      if (other !== undefined && compareOrderKeys(other.key, entry.key) < 0) lo = mid + 1;
      else hi = mid;
    }
    this.#entries.splice(lo, 0, entry);
    this.#byId.set(entry.message.messageId, entry);
    return lo;
  }

  #remove(entry: Entry): void {
    const index = this.#entries.indexOf(entry);
    if (index >= 0) this.#entries.splice(index, 1);
    this.#byId.delete(entry.message.messageId);
  }
}

function later(a: Timestamp, b: Timestamp): boolean {
  return a.seconds !== b.seconds ? a.seconds > b.seconds : a.nanos > b.nanos;
}

function tombstone(message: Message): void {
  message.deleted = true;
  message.text = "";
}
