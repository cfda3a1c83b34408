/**
 * `@chatmesh/client`: a typed client for chatmesh's regional edges.
 *
 * @example
 * ```ts
 * import { createChatClient } from "@chatmesh/client";
 * const chat = createChatClient({ baseUrl: location.origin, token: async () => token });
 * for (const { channel, unreadCount } of await chat.listChannels()) console.log(channel?.name, unreadCount);
 * ```
 */
export { createChatClient } from "./client.js";
export type {
  CallOpts,
  ChatClient,
  ChatClientOptions,
  HistoryPage,
  HistoryQuery,
  SentMessage,
  TransportInit,
} from "./client.js";
export { subscribeWithResume, tokenSubject } from "./subscribe.js";
export type { StreamState, SubscribeHandlers, SubscribeOptions, Subscription } from "./subscribe.js";
export {
  SeqTracker,
  decodeOriginPositions,
  decodePositions,
  encodeOriginPositions,
  encodePositions,
} from "./positions.js";
export type {
  OriginPositions,
  OriginPositionsInit,
  Positions,
  PositionsInit,
  ResumeFromOrigins,
} from "./positions.js";
export { ChannelTimeline, compareOrderKeys, eventOrderKey, messageOrderKey } from "./timeline.js";
export type { OrderKey, TimelineChange } from "./timeline.js";
export { backoffDelay, sleep } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { newClientId } from "./ids.js";
export { Code, ConnectError, errorInfo, errorReason, isFatal, isRetryable, retryDelayMs } from "./errors.js";
export type { ErrorInfo } from "./errors.js";

// The generated message types and enums the helpers take and return.
export type { Channel, ChannelSummary } from "../../../gen/ts/chatmesh/v1/channel_pb.js";
export { ChannelVisibility } from "../../../gen/ts/chatmesh/v1/channel_pb.js";
export type { Message } from "../../../gen/ts/chatmesh/v1/message_pb.js";
export type { Presence } from "../../../gen/ts/chatmesh/v1/presence_pb.js";
export { PresenceStatus } from "../../../gen/ts/chatmesh/v1/presence_pb.js";
export type {
  Event,
  MessageCreated,
  MessageDeleted,
  MessageEdited,
  PresenceChanged,
  TypingChanged,
} from "../../../gen/ts/chatmesh/v1/events_pb.js";
export type { Heartbeat, ReplayComplete } from "../../../gen/ts/chatmesh/v1/notification_service_pb.js";
