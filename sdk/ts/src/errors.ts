/**
 * Error helpers: which failures are worth retrying, and the machine-readable
 * reason (`google.rpc.ErrorInfo.reason`, domain `chatmesh.dev`) every chatmesh
 * error carries in its details.
 *
 * @example
 * ```ts
 * try { await chat.sendMessage(channelId, "hi"); }
 * catch (err) { if (errorReason(err) === "NOT_A_MEMBER") showJoinButton(); }
 * ```
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export { Code, ConnectError };

/** The decoded `google.rpc.ErrorInfo` of a chatmesh error. */
export interface ErrorInfo {
  /** An `ErrorReason` name without its prefix, e.g. `NOT_A_MEMBER`, `TOKEN_EXPIRED`. */
  readonly reason: string;
  /** Always `chatmesh.dev` for the services' own errors. */
  readonly domain: string;
  /** Extra context, e.g. `channel_id`. */
  readonly metadata: Readonly<Record<string, string>>;
}

const ERROR_INFO_TYPE = "google.rpc.ErrorInfo";

/**
 * Codes after which the same request can never succeed: retrying only hides the
 * problem (a bad or expired token, a channel the user may not read, a bad request).
 */
const FATAL_CODES: ReadonlySet<Code> = new Set([
  Code.Unauthenticated,
  Code.PermissionDenied,
  Code.InvalidArgument,
  Code.NotFound,
  Code.Unimplemented,
]);

/** Codes worth a retry of a call that is safe to repeat: the failure was (likely) transient. */
const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.ResourceExhausted,
  Code.Aborted,
  Code.Unknown, // what a failed fetch (network error) becomes
]);

const RETRY_INFO_TYPE = "google.rpc.RetryInfo";

/**
 * True if repeating the call (after a backoff) may succeed.
 *
 * @param idempotent - The call is safe to repeat even if it may have taken effect (a
 *   read, or a command carrying its idempotency key). UNAVAILABLE is retryable either
 *   way (the contract: nothing was committed); RESOURCE_EXHAUSTED only with the
 *   server's RetryInfo; the other transient codes only for idempotent calls.
 */
export function isRetryable(err: unknown, idempotent = true): boolean {
  const error = ConnectError.from(err);
  if (error.code === Code.Unavailable) return true;
  if (error.code === Code.ResourceExhausted) return retryDelayMs(error) !== undefined;
  return idempotent && RETRYABLE_CODES.has(error.code);
}

/** The wait the server asked for (`google.rpc.RetryInfo.retry_delay`) in milliseconds, if any. */
export function retryDelayMs(err: unknown): number | undefined {
  const error = ConnectError.from(err);
  for (const detail of error.details) {
    if ("type" in detail && detail.type === RETRY_INFO_TYPE && detail.value instanceof Uint8Array) {
      try {
        return decodeRetryDelayMs(detail.value);
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

function decodeRetryDelayMs(bytes: Uint8Array): number | undefined {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) {
      // google.protobuf.Duration: 1 = seconds (int64), 2 = nanos (int32)
      const duration = new BinaryReader(reader.bytes());
      let seconds = 0;
      let nanos = 0;
      while (duration.pos < duration.len) {
        const [f, t] = duration.tag();
        if (f === 1 && t === WireType.Varint) seconds = Number(duration.int64());
        else if (f === 2 && t === WireType.Varint) nanos = duration.int32();
        else duration.skip(t, f);
      }
      return seconds * 1000 + nanos / 1e6;
    }
    reader.skip(wireType, field);
  }
  return undefined;
}

// ErrorInfo is decoded by hand: google/rpc/error_details.proto is not part of the
// generated SDK, and three fields do not justify generating it.
function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const reader = new BinaryReader(bytes);
  let reason = "";
  let domain = "";
  const metadata: Record<string, string> = {};
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) {
      reason = reader.string();
    } else if (field === 2 && wireType === WireType.LengthDelimited) {
      domain = reader.string();
    } else if (field === 3 && wireType === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, t] = entry.tag();
        if (f === 1 && t === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && t === WireType.LengthDelimited) value = entry.string();
        else entry.skip(t, f);
      }
      metadata[key] = value;
    } else {
      reader.skip(wireType, field);
    }
  }
  return { reason, domain, metadata };
}

/** The `ErrorInfo` carried by an error's details, if any. */
export function errorInfo(err: unknown): ErrorInfo | undefined {
  const error = ConnectError.from(err);
  for (const detail of error.details) {
    if ("type" in detail && detail.type === ERROR_INFO_TYPE && detail.value instanceof Uint8Array) {
      try {
        return decodeErrorInfo(detail.value);
      } catch {
        return undefined; // a corrupt detail must not hide the error itself
      }
    }
  }
  return undefined;
}

/** The chatmesh reason of an error (`NOT_A_MEMBER`, `SLOW_CONSUMER` …), or undefined. */
export function errorReason(err: unknown): string | undefined {
  const reason = errorInfo(err)?.reason;
  return reason ? reason.replace(/^ERROR_REASON_/, "") : undefined;
}

/** True for errors after which the subscription (or call) must stop rather than retry. */
export function isFatal(err: unknown): boolean {
  return FATAL_CODES.has(ConnectError.from(err).code);
}
