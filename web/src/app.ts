/**
 * chatmesh's development web page: plain DOM on top of `@chatmesh/client`.
 *
 * Sign in (name + regional edge) → channel list with unread counts, channel
 * creation, history with "load older", live messages from the resuming event
 * stream, typing indicator, and members' presence. A reload resumes the stream
 * from the positions this tab stored, so nothing is shown twice or missed.
 *
 * In the every-region write mode (ADR-026; messages carry an `hlc`) a channel
 * is shown in `(hlc, originRegion, messageId)` order by a `ChannelTimeline`: a
 * message from a region that was cut off is inserted where its timestamp puts
 * it, not at the end. Primary-mode channels are shown by seq, as before.
 */
import {
  ChannelTimeline,
  ConnectError,
  createChatClient,
  errorReason,
  PresenceStatus,
  type Channel,
  type ChatClient,
  type Event,
  type Message,
  type StreamState,
  type Subscription,
} from "@chatmesh/client";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  clearSession,
  loadConfig,
  loadOpenChannel,
  loadOriginPositions,
  loadPositions,
  loadSession,
  saveOpenChannel,
  saveOriginPositions,
  savePositions,
  saveSession,
  tokenSource,
  type PageConfig,
  type SavedSession,
} from "./session.js";

/** Typing indicator timings (ms): repeat SetTyping(true) this often while typing; clear after this idle time. */
const TYPING_REPEAT_MS = 3_000;
const TYPING_IDLE_MS = 3_000;
/** Presence events are not replayed after a reconnect, so the members' presence is re-read this often. */
const PRESENCE_REFRESH_MS = 10_000;

/** Diagnostics the browser test reads: what the stream delivered, and each replay. */
interface Diagnostics {
  /** Channel events; in the every-region mode also `originRegion`, `originSeq` and `hlc` (seq "0"). */
  delivered: { channelId: string; seq: string; kind: string; originRegion?: string; originSeq?: string; hlc?: string }[];
  replays: { replayed: string; region: string }[];
}
declare global {
  interface Window {
    chatmesh?: Diagnostics;
  }
}

function $<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from index.html`);
  return el as T;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Record<string, string>> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function describe(err: unknown): string {
  const error = ConnectError.from(err);
  const reason = errorReason(error);
  return reason ? `${error.rawMessage} (${reason})` : error.rawMessage;
}

function timeOf(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

/** One channel as the page knows it. */
interface ChannelView {
  channel: Channel;
  unread: number;
  /** The highest seq already counted (from ListChannels or events): unread counts only newer ones. */
  countedSeq: bigint;
  /** By message id (primary mode: shown by seq). */
  messages: Map<string, Message>;
  /** Every-region mode: the messages that carry an hlc, in (hlc, origin, id) order. */
  timeline: ChannelTimeline;
  /** Every-region mode: GetHistory's token of the next older page. */
  olderToken: string;
  historyLoaded: boolean;
  hasOlder: boolean;
}

/** A channel view with nothing loaded yet. */
function emptyView(channel: Channel, unread: number): ChannelView {
  return {
    channel,
    unread,
    countedSeq: channel.lastSeq,
    messages: new Map(),
    timeline: new ChannelTimeline(),
    olderToken: "",
    historyLoaded: false,
    hasOlder: false,
  };
}

/** A signed-in page. */
class ChatPage {
  readonly #channels = new Map<string, ChannelView>();
  readonly #presence = new Map<string, PresenceStatus>();
  readonly #typing = new Map<string, number>(); // user → expiry (epoch ms), open channel only
  readonly #stop = new AbortController();
  #open: string | undefined;
  #subscription: Subscription | undefined;
  #typingSentAt = 0;
  #typingIdle: ReturnType<typeof setTimeout> | undefined;
  #typingRender: ReturnType<typeof setTimeout> | undefined;
  #presenceTimer: ReturnType<typeof setInterval> | undefined;
  #markingRead = false;

  constructor(
    readonly user: string,
    readonly region: string,
    readonly chat: ChatClient,
    readonly diagnostics: Diagnostics,
  ) {}

  async start(): Promise<void> {
    $("whoami").textContent = `${this.user} @ ${this.region}`;
    const positions = loadPositions(this.user);
    for (const summary of await this.chat.listChannels()) {
      if (!summary.channel) continue;
      this.#channels.set(summary.channel.channelId, emptyView(summary.channel, Number(summary.unreadCount)));
      // Channels this tab never streamed start live from what ListChannels saw;
      // the ones it did resume from where the tab left off.
      if (!positions.has(summary.channel.channelId)) {
        positions.set(summary.channel.channelId, summary.channel.lastSeq);
      }
    }
    for (const channelId of [...positions.keys()]) {
      if (!this.#channels.has(channelId)) positions.delete(channelId); // left meanwhile
    }
    const originPositions = loadOriginPositions(this.user);
    for (const channelId of [...originPositions.keys()]) {
      if (!this.#channels.has(channelId)) originPositions.delete(channelId);
    }
    this.renderChannels();
    this.#subscription = this.chat.subscribe(
      {
        onEvent: (event) => this.onEvent(event),
        onState: (state) => this.onState(state),
        onReplayComplete: (info) => {
          this.diagnostics.replays.push({ replayed: info.replayedEvents.toString(), region: info.region });
          void this.refreshPresence();
        },
      },
      {
        signal: this.#stop.signal,
        resumeFrom: positions,
        ...(originPositions.size > 0 ? { resumeFromOrigins: originPositions } : {}),
        userId: this.user,
      },
    );
    this.#subscription.done.catch((err: unknown) => {
      $("connection").textContent = `stopped: ${describe(err)}`;
    });
    savePositions(this.user, positions);
    saveOriginPositions(this.user, originPositions);
    this.#presenceTimer = setInterval(() => void this.refreshPresence(), PRESENCE_REFRESH_MS);
    const reopen = loadOpenChannel(this.user);
    if (reopen && this.#channels.has(reopen)) await this.openChannel(reopen);
  }

  stop(): void {
    this.#stop.abort();
    clearInterval(this.#presenceTimer);
    clearTimeout(this.#typingIdle);
    clearTimeout(this.#typingRender);
  }

  // -- stream -----------------------------------------------------------------

  onState(state: StreamState): void {
    const out = $("connection");
    switch (state.kind) {
      case "connecting":
        out.textContent = state.attempt > 1 ? `reconnecting (attempt ${state.attempt})…` : "connecting…";
        break;
      case "live":
        out.textContent = `live via ${state.region}`;
        break;
      case "retrying":
        out.textContent = `disconnected (${state.error.code}); retrying in ${(state.delayMs / 1000).toFixed(1)} s`;
        break;
      case "gap":
        // The stream ended rather than skip messages this region does not have yet;
        // the client resumes (and the page gets them, in order) once history holds them.
        out.textContent =
          state.originRegion !== undefined
            ? `catching up on ${state.channelId} from ${state.originRegion}…`
            : state.regionHas === undefined
            ? `catching up on ${state.channelId}…`
            : `catching up on ${state.channelId}: ${state.regionHas} of ${state.want} here`;
        break;
      case "stopped":
        out.textContent = state.error ? `stopped: ${describe(state.error)}` : "offline";
        break;
    }
  }

  onEvent(event: Event): void {
    if (event.seq > 0n) {
      this.diagnostics.delivered.push({
        channelId: event.channelId,
        seq: event.seq.toString(),
        kind: event.payload.case ?? "unknown",
      });
    } else if (event.originSeq > 0n) {
      this.diagnostics.delivered.push({
        channelId: event.channelId,
        seq: "0",
        kind: event.payload.case ?? "unknown",
        originRegion: event.originRegion,
        originSeq: event.originSeq.toString(),
        hlc: event.hlc.toString(),
      });
    }
    const payload = event.payload;
    switch (payload.case) {
      case "messageCreated":
      case "messageEdited":
        if (payload.value.message) this.upsertMessage(payload.value.message, event.seq, event);
        break;
      case "messageDeleted": {
        const view = this.#channels.get(event.channelId);
        if (view && event.originSeq > 0n) {
          // Every-region mode: final even if the message is not here yet.
          if (view.timeline.apply(event).kind !== "ignored" && event.channelId === this.#open) {
            this.renderMessages();
          }
          break;
        }
        const message = view?.messages.get(payload.value.messageId);
        if (view && message) {
          message.deleted = true;
          message.text = "";
          if (event.channelId === this.#open) this.renderMessages();
        }
        break;
      }
      case "channelCreated":
        if (payload.value.channel) this.addChannel(payload.value.channel);
        break;
      case "memberJoined":
      case "memberLeft":
        this.onMembership(event.channelId, payload.value.userId, payload.case === "memberJoined");
        break;
      case "typingChanged": {
        const { userId, typing, expiresAt } = payload.value;
        if (event.channelId !== this.#open || userId === this.user) break;
        if (typing) this.#typing.set(userId, expiresAt ? timestampDate(expiresAt).getTime() : Date.now() + 6_000);
        else this.#typing.delete(userId);
        this.renderTyping();
        break;
      }
      case "presenceChanged": {
        const presence = payload.value.presence;
        if (presence) {
          this.#presence.set(presence.userId, presence.status);
          this.renderMembers();
        }
        break;
      }
      case "readMarkerUpdated": {
        // Another tab of ours read the channel.
        const view = this.#channels.get(event.channelId);
        const origins = payload.value.lastReadOrigins;
        if (view && Object.keys(origins).length > 0) {
          // Every-region mode: read when the marker covers every origin this page has seen.
          const seen = this.#subscription?.originPositions().get(event.channelId) ?? new Map<string, bigint>();
          if ([...seen].every(([origin, at]) => (origins[origin] ?? 0n) >= at)) {
            view.unread = 0;
            this.renderChannels();
          }
        } else if (view && payload.value.lastReadSeq >= view.countedSeq) {
          view.unread = 0;
          this.renderChannels();
        }
        break;
      }
      default:
        break;
    }
    if (this.#subscription) {
      savePositions(this.user, this.#subscription.positions());
      saveOriginPositions(this.user, this.#subscription.originPositions());
    }
  }

  /** A message from an event (`event`), a SendMessage answer or history. */
  upsertMessage(message: Message, eventSeq: bigint, event?: Event): void {
    const view = this.#channels.get(message.channelId);
    if (!view) {
      // A channel we have not seen yet (created while this page was loading).
      void this.chat.getChannel(message.channelId).then((channel) => {
        this.addChannel(channel);
        this.upsertMessage(message, eventSeq, event);
      });
      return;
    }
    if (message.hlc > 0n || (event !== undefined && event.originSeq > 0n)) {
      this.upsertOrdered(view, message, event);
      return;
    }
    // A deletion is final: nothing that arrives later (an older page, an edit that
    // crossed the delete) brings the text back into this page's cache.
    const known = view.messages.get(message.messageId);
    view.messages.set(message.messageId, known?.deleted ? known : message);
    if (eventSeq > view.countedSeq) {
      view.countedSeq = eventSeq;
      if (message.channelId !== this.#open && message.senderUserId !== this.user) view.unread += 1;
    }
    if (message.channelId === this.#open) {
      this.renderMessages();
      this.#typing.delete(message.senderUserId);
      this.renderTyping();
      void this.markRead();
    }
    this.renderChannels();
  }

  /**
   * Every-region mode: the message goes where its (hlc, origin, id) puts it;
   * edits and deletes follow the convergence rules (the timeline's).
   */
  upsertOrdered(view: ChannelView, message: Message, event?: Event): void {
    const change = event ? view.timeline.apply(event) : view.timeline.upsert(message);
    if (change.kind === "ignored") return;
    // No seqs to count unread by in this mode: count the messages that arrive while elsewhere.
    if (change.kind === "inserted" && message.channelId !== this.#open && message.senderUserId !== this.user) {
      view.unread += 1;
    }
    if (message.channelId === this.#open) {
      this.renderMessages();
      this.#typing.delete(message.senderUserId);
      this.renderTyping();
    }
    this.renderChannels();
  }

  addChannel(channel: Channel): void {
    if (this.#channels.has(channel.channelId)) return;
    this.#channels.set(channel.channelId, emptyView(channel, 0));
    this.renderChannels();
  }

  onMembership(channelId: string, userId: string, joined: boolean): void {
    const view = this.#channels.get(channelId);
    if (!view) return;
    if (!joined && userId === this.user) {
      this.#channels.delete(channelId);
      if (this.#open === channelId) this.#open = undefined;
      this.renderChannels();
      this.renderConversation();
      return;
    }
    const members = new Set(view.channel.memberUserIds);
    if (joined) members.add(userId);
    else members.delete(userId);
    view.channel.memberUserIds = [...members].sort();
    if (channelId === this.#open) {
      this.renderMembers();
      void this.refreshPresence();
    }
  }

  // -- actions ----------------------------------------------------------------

  async openChannel(channelId: string): Promise<void> {
    const view = this.#channels.get(channelId);
    if (!view) return;
    this.#open = channelId;
    saveOpenChannel(this.user, channelId);
    this.#typing.clear();
    view.unread = 0;
    this.renderChannels();
    this.renderConversation();
    if (!view.historyLoaded) {
      const page = await this.chat.getHistory(channelId, { limit: 50 });
      this.addHistory(view, page.messages, page.nextPageToken);
      // Every-region mode: a resumed stream starts after what the history holds.
      if (Object.keys(page.lastOriginSeqs).length > 0) {
        this.#subscription?.trackOrigins(channelId, page.lastOriginSeqs);
      }
      view.historyLoaded = true;
      view.hasOlder = page.hasMore;
      if (page.lastSeq > view.countedSeq) view.countedSeq = page.lastSeq;
      if (this.#open === channelId) this.renderConversation();
    }
    await Promise.all([this.refreshPresence(), this.markRead()]);
  }

  async loadOlder(): Promise<void> {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    if (!view) return;
    const oldest = this.sortedMessages(view)[0];
    const page = await this.chat.getHistory(view.channel.channelId, {
      limit: 50,
      ...(view.olderToken ? { pageToken: view.olderToken } : oldest ? { beforeSeq: oldest.seq } : {}),
    });
    this.addHistory(view, page.messages, page.nextPageToken);
    view.hasOlder = page.hasMore;
    this.renderConversation();
  }

  /** A page of history: primary-mode messages by id, every-region ones into the timeline. */
  addHistory(view: ChannelView, messages: Message[], nextPageToken: string): void {
    for (const message of messages) {
      if (message.hlc > 0n) view.timeline.upsert(message);
      else view.messages.set(message.messageId, message);
    }
    view.olderToken = nextPageToken;
  }

  async markRead(): Promise<void> {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    if (!view || this.#markingRead || document.visibilityState === "hidden") return;
    const newest = this.sortedMessages(view).at(-1);
    if (!newest) return;
    // Every-region mode has no seqs: mark what the stream delivered, per origin (ADR-026).
    const origins = this.#subscription?.originPositions().get(view.channel.channelId);
    if (newest.seq === 0n && (origins === undefined || origins.size === 0)) return;
    this.#markingRead = true;
    try {
      if (newest.seq === 0n && origins !== undefined) {
        await this.chat.markReadOrigins(view.channel.channelId, origins);
      } else {
        await this.chat.markRead(view.channel.channelId, newest.seq);
      }
    } catch {
      // Best effort: the next message or visit marks it again.
    } finally {
      this.#markingRead = false;
    }
  }

  async createChannel(name: string, members: string[]): Promise<void> {
    const channel = await this.chat.createChannel(name, members);
    this.addChannel(channel);
    // The creator's stream will also deliver channel_created; the position
    // makes a reload resume this channel too.
    this.#subscription?.track(channel.channelId, 0n);
    await this.openChannel(channel.channelId);
  }

  async send(text: string): Promise<void> {
    if (!this.#open) return;
    const channelId = this.#open;
    await this.stopTyping();
    const sent = await this.chat.sendMessage(channelId, text);
    this.upsertMessage(sent.message, sent.message.seq);
  }

  /** Called on every keystroke in the composer. */
  typed(hasText: boolean): void {
    if (!this.#open) return;
    clearTimeout(this.#typingIdle);
    if (!hasText) {
      void this.stopTyping();
      return;
    }
    const now = Date.now();
    if (now - this.#typingSentAt > TYPING_REPEAT_MS) {
      this.#typingSentAt = now;
      void this.chat.setTyping(this.#open, true).catch(() => undefined);
    }
    this.#typingIdle = setTimeout(() => void this.stopTyping(), TYPING_IDLE_MS);
  }

  async stopTyping(): Promise<void> {
    clearTimeout(this.#typingIdle);
    if (!this.#typingSentAt || !this.#open) return;
    this.#typingSentAt = 0;
    await this.chat.setTyping(this.#open, false).catch(() => undefined);
  }

  async refreshPresence(): Promise<void> {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    if (!view) return;
    try {
      for (const p of await this.chat.getPresence(view.channel.memberUserIds)) {
        this.#presence.set(p.userId, p.status);
      }
      this.renderMembers();
    } catch {
      // Presence is decoration: keep what we have and try again later.
    }
  }

  // -- rendering --------------------------------------------------------------

  sortedMessages(view: ChannelView): Message[] {
    // A channel is written in one mode: hlc-stamped messages make it an every-region channel.
    if (view.timeline.size > 0) return view.timeline.messages();
    return [...view.messages.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  }

  renderChannels(): void {
    const list = $("channel-list");
    const items = [...this.#channels.values()].map((view) => {
      const { channelId, name } = view.channel;
      const button = el("button", { type: "button", "data-channel-id": channelId }, el("span", {}, name));
      if (view.unread > 0) {
        button.append(el("span", { class: "badge", "aria-label": `${view.unread} unread` }, String(view.unread)));
      }
      if (channelId === this.#open) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => void this.openChannel(channelId));
      return el("li", {}, button);
    });
    list.replaceChildren(...items);
  }

  renderConversation(): void {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    $("channel-title").textContent = view ? view.channel.name : "No channel selected";
    $("composer").hidden = !view;
    $("load-older").hidden = !view?.hasOlder;
    this.renderMessages();
    this.renderTyping();
    this.renderMembers();
  }

  renderMessages(): void {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(
      ...(view ? this.sortedMessages(view) : []).map((m) =>
        el(
          "li",
          {
            "data-seq": m.seq.toString(),
            "data-message-id": m.messageId,
            ...(m.hlc > 0n ? { "data-hlc": m.hlc.toString(), "data-origin-seq": m.originSeq.toString() } : {}),
            class: [m.senderUserId === this.user ? "mine" : "", m.deleted ? "deleted" : ""].join(" ").trim(),
          },
          el("span", { class: "sender" }, m.senderUserId),
          el("span", { class: "text" }, m.deleted ? "message deleted" : m.text),
          el("span", { class: "meta" }, `${timeOf(m.createdAt)} · ${m.originRegion}${m.editedAt ? " · edited" : ""}`),
        ),
      ),
    );
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  renderTyping(): void {
    clearTimeout(this.#typingRender);
    const now = Date.now();
    for (const [user, expiry] of this.#typing) if (expiry <= now) this.#typing.delete(user);
    const names = [...this.#typing.keys()].sort();
    $("typing").textContent =
      names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
    if (names.length > 0) {
      // Clear each indicator at its expiry even if no "stopped typing" arrives.
      const next = Math.min(...this.#typing.values()) - now;
      this.#typingRender = setTimeout(() => this.renderTyping(), Math.max(50, next));
    }
  }

  renderMembers(): void {
    const view = this.#open ? this.#channels.get(this.#open) : undefined;
    const label = (status: PresenceStatus | undefined): string =>
      status === PresenceStatus.ONLINE ? "online" : status === PresenceStatus.OFFLINE ? "offline" : "unknown";
    $("member-list").replaceChildren(
      ...(view?.channel.memberUserIds ?? []).map((user) => {
        const status = label(this.#presence.get(user));
        return el(
          "li",
          { "data-user": user, "data-presence": status },
          el("span", {}, user === this.user ? `${user} (you)` : user),
          el("span", { class: "presence", "data-status": status }, status),
        );
      }),
    );
  }
}

// -- page wiring ------------------------------------------------------------------

let page: ChatPage | undefined;

async function signIn(config: PageConfig, session: SavedSession): Promise<void> {
  const edge = config.edges.find((e) => e.url === session.edge) ?? config.edges[0];
  if (!edge) throw new Error("no edge to connect to");
  const chat = createChatClient({ baseUrl: edge.url, token: tokenSource(session.user, session.token) });
  const diagnostics: Diagnostics = { delivered: [], replays: [] };
  window.chatmesh = diagnostics;
  const next = new ChatPage(session.user, edge.region, chat, diagnostics);
  saveSession({ ...session, edge: edge.url });
  $("signin-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
  page = next;
  await next.start();
}

function signOut(): void {
  if (page) {
    page.stop();
    clearSession(page.user);
    page = undefined;
  }
  location.reload();
}

function wire(config: PageConfig): void {
  const select = $<HTMLSelectElement>("signin").querySelector("select") as HTMLSelectElement;
  for (const edge of config.edges) {
    const option = el("option", { value: edge.url }, `${edge.region}${edge.primary ? " (primary)" : ""} — ${edge.url}`);
    if (edge.url === location.origin) option.selected = true;
    select.append(option);
  }
  $("token-row").hidden = config.devToken;

  const signinForm = $<HTMLFormElement>("signin");
  signinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(signinForm);
    const session: SavedSession = {
      user: String(data.get("user") ?? "").trim(),
      edge: String(data.get("edge") ?? location.origin),
      token: String(data.get("token") ?? "").trim(),
    };
    $("signin-error").textContent = "";
    signIn(config, session).catch((err: unknown) => {
      $("signin-error").textContent = describe(err);
      $("signin-view").hidden = false;
      $("chat-view").hidden = true;
    });
  });

  $("sign-out").addEventListener("click", signOut);

  const newChannel = $<HTMLFormElement>("new-channel");
  newChannel.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(newChannel);
    const name = String(data.get("name") ?? "").trim();
    const members = String(data.get("members") ?? "")
      .split(",")
      .map((m) => m.trim())
      .filter((m) => m && m !== page?.user);
    $("new-channel-error").textContent = "";
    page
      ?.createChannel(name, [...new Set(members)])
      .then(() => newChannel.reset())
      .catch((err: unknown) => {
        $("new-channel-error").textContent = describe(err);
      });
  });

  const composer = $<HTMLFormElement>("composer");
  const input = composer.querySelector("input") as HTMLInputElement;
  input.addEventListener("input", () => page?.typed(input.value.trim() !== ""));
  composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    $("composer-error").textContent = "";
    input.value = "";
    page?.send(text).catch((err: unknown) => {
      input.value = text; // give the text back so nothing typed is lost
      $("composer-error").textContent = describe(err);
    });
  });

  $("load-older").addEventListener("click", () => void page?.loadOlder());
  document.addEventListener("visibilitychange", () => void page?.markRead());
}

async function main(): Promise<void> {
  const config = await loadConfig();
  wire(config);
  const saved = loadSession();
  if (saved) {
    // A reload of a signed-in tab: same user, same edge, stream resumed.
    await signIn(config, saved).catch((err: unknown) => {
      $("signin-error").textContent = describe(err);
      $("signin-view").hidden = false;
      $("chat-view").hidden = true;
    });
  }
}

void main();
