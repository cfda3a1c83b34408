/**
 * `createChatClient`: the three public services over gRPC-Web, with the
 * caller's bearer token on every call, typed helpers, retries where a retry is
 * safe (reads, and writes that carry an idempotency key), and a resuming
 * event stream.
 *
 * @example
 * ```ts
 * const chat = createChatClient({ baseUrl: "http://127.0.0.1:8080", token: () => myToken });
 * const channel = await chat.createChannel("lunch", ["bob"]);
 * await chat.sendMessage(channel.channelId, "noon?");
 * const ctl = new AbortController();
 * chat.subscribe({ onEvent: (e) => console.log(e.payload.case, e.seq) }, { signal: ctl.signal });
 * ```
 */
import {
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Channel, ChannelSummary } from "../../../gen/ts/chatmesh/v1/channel_pb.js";
import { ChannelVisibility } from "../../../gen/ts/chatmesh/v1/channel_pb.js";
import { CommandService } from "../../../gen/ts/chatmesh/v1/command_service_pb.js";
import type { Message } from "../../../gen/ts/chatmesh/v1/message_pb.js";
import { NotificationService } from "../../../gen/ts/chatmesh/v1/notification_service_pb.js";
import type { Presence } from "../../../gen/ts/chatmesh/v1/presence_pb.js";
import { QueryService } from "../../../gen/ts/chatmesh/v1/query_service_pb.js";
import { backoffDelay, sleep, type BackoffOptions } from "./backoff.js";
import { ConnectError, isRetryable, retryDelayMs } from "./errors.js";
import { newClientId } from "./ids.js";
import {
  subscribeWithResume,
  type SubscribeHandlers,
  type SubscribeOptions,
  type Subscription,
} from "./subscribe.js";

/** Options of {@link createChatClient}. */
export interface ChatClientOptions {
  /** The regional edge, e.g. `http://127.0.0.1:8080` (gRPC-Web is served at its root). */
  readonly baseUrl: string;
  /** Returns the current bearer token; called before every call, so it may refresh. */
  readonly token: () => string | Promise<string>;
  /** Deadline of unary calls in milliseconds (default 10 000). Streams have none. */
  readonly timeoutMs?: number;
  /** Extra attempts after a retryable failure (default 4: five attempts, as the Python client). */
  readonly retries?: number;
  /**
   * Milliseconds for a whole call, every attempt and wait included (default 30 000):
   * a wait that would end past it is not taken, and each attempt's deadline is cut
   * to what is left.
   */
  readonly budgetMs?: number;
  /** Delays between those attempts (and the default for subscriptions); full jitter. */
  readonly backoff?: BackoffOptions;
  /** A fetch implementation (default: the global one). */
  readonly fetch?: typeof globalThis.fetch;
  /**
   * Builds the transport instead of the default (gRPC-Web over `fetch`). In
   * Node, an edge with a development CA (`chatmesh up --tls`) is reached with
   * `@connectrpc/connect-node`'s gRPC-Web transport and `nodeOptions: { ca }`
   * (see README: TLS), keeping the given interceptors (they add the token).
   */
  readonly transport?: (init: TransportInit) => Transport;
}

/** What {@link ChatClientOptions.transport} is given. */
export interface TransportInit {
  readonly baseUrl: string;
  readonly interceptors: Interceptor[];
}

/** Per-call options of the helpers. */
export interface CallOpts {
  /** Aborting it cancels the call (and any pending retry). */
  readonly signal?: AbortSignal;
}

/**
 * A page of history: messages ascending by seq (primary write mode) or by
 * `(hlc, originRegion, messageId)` (every-region mode, ADR-026).
 */
export interface HistoryPage {
  readonly messages: Message[];
  /** More messages lie beyond the page in the direction of travel. */
  readonly hasMore: boolean;
  /** The channel's newest seq known to the serving region (0 in the every-region mode). */
  readonly lastSeq: bigint;
  /** Every-region mode: the token of the next older page ("" at the oldest, and in the primary mode). */
  readonly nextPageToken: string;
  /**
   * Every-region mode: origin region → the newest origin_seq of the channel the
   * region had applied when it read the page (subscribe from these with
   * `resumeFromOrigins`, or `Subscription.trackOrigins`). Empty in the primary mode.
   */
  readonly lastOriginSeqs: Record<string, bigint>;
}

/** Bounds of a history request (see QueryService.GetHistory). */
export interface HistoryQuery extends CallOpts {
  /** Only messages with seq < beforeSeq. */
  readonly beforeSeq?: bigint;
  /** Only messages with seq > afterSeq, oldest first. */
  readonly afterSeq?: bigint;
  /** Page size, 1–200 (server default 50). */
  readonly limit?: number;
  /** Every-region mode: a page's `nextPageToken`, to read the page before it. */
  readonly pageToken?: string;
}

/** The result of {@link ChatClient.sendMessage}. */
export interface SentMessage {
  readonly message: Message;
  /** The key had been accepted before: this is the original message. */
  readonly duplicate: boolean;
}

/** The chat API of one regional edge. */
export interface ChatClient {
  /** The edge's base URL. */
  readonly baseUrl: string;
  /** The raw generated clients, for anything the helpers do not cover. */
  readonly command: Client<typeof CommandService>;
  readonly query: Client<typeof QueryService>;
  readonly notification: Client<typeof NotificationService>;

  /** Creates a channel with the caller and `memberUserIds`; retried safely with one request id. */
  createChannel(
    name: string,
    memberUserIds: readonly string[],
    options?: CallOpts & { readonly visibility?: ChannelVisibility; readonly clientRequestId?: string },
  ): Promise<Channel>;
  /** Joins a public channel. */
  joinChannel(channelId: string, options?: CallOpts): Promise<Channel>;
  /** Leaves a channel. */
  leaveChannel(channelId: string, options?: CallOpts): Promise<void>;
  /** Sends a message with a fresh `client_msg_id` (or the given one); retries never duplicate it. */
  sendMessage(
    channelId: string,
    text: string,
    options?: CallOpts & { readonly clientMsgId?: string },
  ): Promise<SentMessage>;
  /** Replaces the text of one of the caller's messages. */
  editMessage(channelId: string, messageId: string, text: string, options?: CallOpts): Promise<Message>;
  /** Deletes one of the caller's messages. */
  deleteMessage(channelId: string, messageId: string, options?: CallOpts): Promise<void>;
  /** Shows (repeat every few seconds) or clears the caller's typing indicator. Not retried. */
  setTyping(channelId: string, typing: boolean, options?: CallOpts): Promise<void>;
  /** Moves the caller's read marker forward; returns the marker after the call. */
  markRead(channelId: string, seq: bigint, options?: CallOpts): Promise<bigint>;
  /**
   * Every-region write mode (ADR-026): moves the caller's per-origin read marker
   * (origin region -> highest `origin_seq` read, e.g. one channel of a
   * subscription's `originPositions()`); returns the merged marker. Per origin the
   * maximum, capped at what the serving region has applied.
   */
  markReadOrigins(
    channelId: string,
    readThroughOrigins: ReadonlyMap<string, bigint> | Readonly<Record<string, bigint>>,
    options?: CallOpts,
  ): Promise<Record<string, bigint>>;
  /** The caller's channels with unread counts, most recently active first. */
  listChannels(options?: CallOpts): Promise<ChannelSummary[]>;
  /** A channel with its members. */
  getChannel(channelId: string, options?: CallOpts): Promise<Channel>;
  /** Presence of up to 200 users, in request order. */
  getPresence(userIds: readonly string[], options?: CallOpts): Promise<Presence[]>;
  /** One page of history. */
  getHistory(channelId: string, query?: HistoryQuery): Promise<HistoryPage>;
  /**
   * Pages going back in time from `beforeSeq` (default: the newest), until the
   * start; in the every-region mode by `nextPageToken` (`beforeSeq` ignored).
   */
  olderHistory(
    channelId: string,
    options?: CallOpts & { readonly beforeSeq?: bigint; readonly pageSize?: number },
  ): AsyncGenerator<HistoryPage, void, undefined>;
  /** Pages going forward from `afterSeq` (0: the start), until the newest. */
  newerHistory(
    channelId: string,
    afterSeq: bigint,
    options?: CallOpts & { readonly pageSize?: number },
  ): AsyncGenerator<HistoryPage, void, undefined>;
  /**
   * The caller's event stream, resumed automatically after disconnects (see
   * {@link subscribeWithResume}): every channel event is delivered once, in order.
   */
  subscribe(handlers: SubscribeHandlers, options?: SubscribeOptions): Subscription;
}

/** Creates a client for one regional edge. */
export function createChatClient(options: ChatClientOptions): ChatClient {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${await options.token()}`);
    return next(req);
  };
  const transport = options.transport
    ? options.transport({ baseUrl: options.baseUrl, interceptors: [auth] })
    : createGrpcWebTransport({
        baseUrl: options.baseUrl,
        interceptors: [auth],
        ...(options.fetch ? { fetch: options.fetch } : {}),
      });
  const command = createClient(CommandService, transport);
  const query = createClient(QueryService, transport);
  const notification = createClient(NotificationService, transport);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const retries = options.retries ?? 4;
  const budgetMs = options.budgetMs ?? 30_000;

  const callOptions = (opts?: CallOpts): CallOptions => ({
    timeoutMs,
    ...(opts?.signal ? { signal: opts.signal } : {}),
  });

  /**
   * Runs `fn` again after retryable failures ({@link isRetryable}): full-jitter
   * backoff, at least the server's RetryInfo, within the call's budget. Calls that
   * are not idempotent are repeated only after UNAVAILABLE (nothing was committed).
   */
  async function retrying<T>(
    opts: CallOpts | undefined,
    fn: (call: CallOptions) => Promise<T>,
    idempotent = true,
  ): Promise<T> {
    const deadline = Date.now() + budgetMs;
    for (let attempt = 1; ; attempt++) {
      const left = deadline - Date.now();
      try {
        return await fn({ ...callOptions(opts), timeoutMs: Math.max(1, Math.min(timeoutMs, left)) });
      } catch (err) {
        if (attempt > retries || !isRetryable(err, idempotent) || opts?.signal?.aborted) throw err;
        const wait = Math.max(backoffDelay(attempt, options.backoff), retryDelayMs(err) ?? 0);
        if (wait >= deadline - Date.now()) throw err;
        await sleep(wait, opts?.signal);
      }
    }
  }

  function required<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new ConnectError(`the response has no ${what}`);
    return value;
  }

  async function getHistory(channelId: string, q: HistoryQuery = {}): Promise<HistoryPage> {
    const resp = await retrying(q, (call) =>
      query.getHistory(
        {
          channelId,
          ...(q.beforeSeq !== undefined ? { beforeSeq: q.beforeSeq } : {}),
          ...(q.afterSeq !== undefined ? { afterSeq: q.afterSeq } : {}),
          ...(q.limit !== undefined ? { limit: q.limit } : {}),
          ...(q.pageToken ? { pageToken: q.pageToken } : {}),
        },
        call,
      ),
    );
    return {
      messages: resp.messages,
      hasMore: resp.hasMore,
      lastSeq: resp.lastSeq,
      nextPageToken: resp.nextPageToken,
      lastOriginSeqs: resp.lastOriginSeqs,
    };
  }

  return {
    baseUrl: options.baseUrl,
    command,
    query,
    notification,

    async createChannel(name, memberUserIds, opts = {}) {
      const clientRequestId = opts.clientRequestId ?? newClientId("r_");
      const resp = await retrying(opts, (call) =>
        command.createChannel(
          {
            name,
            memberUserIds: [...memberUserIds],
            visibility: opts.visibility ?? ChannelVisibility.PRIVATE,
            clientRequestId,
          },
          call,
        ),
      );
      return required(resp.channel, "channel");
    },

    async joinChannel(channelId, opts) {
      const resp = await retrying(opts, (call) => command.joinChannel({ channelId }, call), false);
      return required(resp.channel, "channel");
    },

    async leaveChannel(channelId, opts) {
      await retrying(opts, (call) => command.leaveChannel({ channelId }, call), false);
    },

    async sendMessage(channelId, text, opts = {}) {
      // One key for every attempt: a retry after a lost response returns the
      // stored message (duplicate=true) instead of posting it twice.
      const clientMsgId = opts.clientMsgId ?? newClientId("m_");
      const resp = await retrying(opts, (call) =>
        command.sendMessage({ channelId, text, clientMsgId }, call),
      );
      return { message: required(resp.message, "message"), duplicate: resp.duplicate };
    },

    async editMessage(channelId, messageId, text, opts) {
      const resp = await retrying(
        opts,
        (call) => command.editMessage({ channelId, messageId, text }, call),
        false,
      );
      return required(resp.message, "message");
    },

    async deleteMessage(channelId, messageId, opts) {
      await retrying(opts, (call) => command.deleteMessage({ channelId, messageId }, call), false);
    },

    async setTyping(channelId, typing, opts) {
      await retrying(opts, (call) => command.setTyping({ channelId, typing }, call), false);
    },

    async markRead(channelId, seq, opts) {
      // The marker only moves forward, so repeating the call is harmless.
      const resp = await retrying(opts, (call) => command.markRead({ channelId, seq }, call));
      return resp.lastReadSeq;
    },

    async markReadOrigins(channelId, readThroughOrigins, opts) {
      const origins: Record<string, bigint> =
        readThroughOrigins instanceof Map ? Object.fromEntries(readThroughOrigins) : { ...readThroughOrigins };
      // Per origin the maximum on the server: repeating the call is harmless.
      const resp = await retrying(opts, (call) =>
        command.markRead({ channelId, readThroughOrigins: origins }, call),
      );
      return resp.lastReadOrigins;
    },

    async listChannels(opts) {
      const resp = await retrying(opts, (call) => query.listChannels({}, call));
      return resp.channels;
    },

    async getChannel(channelId, opts) {
      const resp = await retrying(opts, (call) => query.getChannel({ channelId }, call));
      return required(resp.channel, "channel");
    },

    async getPresence(userIds, opts) {
      if (userIds.length === 0) return [];
      const resp = await retrying(opts, (call) =>
        query.getPresence({ userIds: [...userIds] }, call),
      );
      return resp.presences;
    },

    getHistory,

    async *olderHistory(channelId, opts = {}) {
      let beforeSeq = opts.beforeSeq;
      let pageToken = "";
      for (;;) {
        const page = await getHistory(channelId, {
          ...(pageToken ? { pageToken } : beforeSeq !== undefined ? { beforeSeq } : {}),
          ...(opts.pageSize !== undefined ? { limit: opts.pageSize } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        yield page;
        if (page.nextPageToken) {
          // Every-region mode: seqs are 0, the token carries the order key.
          if (!page.hasMore) return;
          pageToken = page.nextPageToken;
          continue;
        }
        const oldest = page.messages[0];
        if (!page.hasMore || oldest === undefined || oldest.seq <= 1n) return;
        beforeSeq = oldest.seq;
      }
    },

    async *newerHistory(channelId, afterSeq, opts = {}) {
      let after = afterSeq;
      for (;;) {
        const page = await getHistory(channelId, {
          afterSeq: after,
          ...(opts.pageSize !== undefined ? { limit: opts.pageSize } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        yield page;
        const newest = page.messages.at(-1);
        if (!page.hasMore || newest === undefined) return;
        after = newest.seq;
      }
    },

    subscribe(handlers, subscribeOptions = {}) {
      return subscribeWithResume(notification, options.token, handlers, {
        ...(options.backoff ? { backoff: options.backoff } : {}),
        historyLastSeq: async (channelId, afterSeq) =>
          (await getHistory(channelId, { afterSeq, limit: 1 })).lastSeq,
        ...subscribeOptions,
      });
    },
  };
}
