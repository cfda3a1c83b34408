/**
 * Exponential backoff with full jitter, and a sleep that an AbortSignal ends early.
 * The same policy as the Python client (`mesh/client/_retry.py`).
 */

/** How long to wait between reconnection attempts. */
export interface BackoffOptions {
  /** Delay before the first retry, in milliseconds (default 250). */
  readonly initialMs?: number;
  /** Upper bound of any delay, in milliseconds (default 15 000). */
  readonly maxMs?: number;
  /** Growth factor per failed attempt (default 2). */
  readonly multiplier?: number;
}

/**
 * The delay before retry number `attempt` (1-based): *full jitter* — uniform in
 * `[0, min(max, initial * multiplier^(attempt-1))]` (AWS architecture blog,
 * "Exponential Backoff And Jitter"), so that many clients cut off at once spread
 * their retries over the whole window instead of coming back together.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random = Math.random): number {
  const initial = options.initialMs ?? 250;
  const max = options.maxMs ?? 15_000;
  const multiplier = options.multiplier ?? 2;
  const base = Math.min(max, initial * multiplier ** Math.max(0, attempt - 1));
  return Math.round(random() * base);
}

/** Resolves after `ms`, or as soon as `signal` aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
