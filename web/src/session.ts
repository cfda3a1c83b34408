/**
 * What the page keeps outside the DOM: the edge list from `/config.json`,
 * tokens, and the per-tab session (user, edge, open channel, stream positions)
 * in sessionStorage, so a reload picks up where the tab was: same user, same
 * channel, and a stream resumed from the last seq delivered per channel (in
 * the every-region write mode: per channel and origin region).
 */
import {
  decodeOriginPositions,
  decodePositions,
  encodeOriginPositions,
  encodePositions,
  type OriginPositions,
  type Positions,
} from "@chatmesh/client";

/** One regional edge, as `/config.json` lists it. */
export interface EdgeInfo {
  readonly region: string;
  readonly url: string;
  readonly primary: boolean;
}

/** `GET /config.json` of the edge that served the page. */
export interface PageConfig {
  /** The region of the edge that served the page. */
  readonly region: string;
  /** Every region's edge (may be empty: then only this one is known). */
  readonly edges: readonly EdgeInfo[];
  /** Whether this edge mints development tokens at `/dev/token`. */
  readonly devToken: boolean;
}

/** Loads `/config.json`; falls back to "just this edge" if it is missing. */
export async function loadConfig(): Promise<PageConfig> {
  const own: EdgeInfo = { region: "this edge", url: location.origin, primary: false };
  try {
    const resp = await fetch("/config.json", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const raw = (await resp.json()) as Partial<PageConfig>;
    const region = typeof raw.region === "string" ? raw.region : own.region;
    const edges = Array.isArray(raw.edges) && raw.edges.length > 0
      ? raw.edges
      : [{ ...own, region }];
    return { region, edges, devToken: raw.devToken === true };
  } catch {
    return { region: own.region, edges: [own], devToken: false };
  }
}

/**
 * A token source for `createChatClient`: a development token from this page's
 * own edge (`/dev/token`, fetched again a minute before it expires), or a
 * pasted one when the edge does not mint tokens.
 */
export function tokenSource(user: string, pasted: string): () => Promise<string> {
  if (pasted) return async () => pasted;
  let cached: { token: string; refreshAt: number } | undefined;
  let pending: Promise<string> | undefined;
  const fetchToken = async (): Promise<string> => {
    const resp = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
    if (!resp.ok) throw new Error(`could not get a token: HTTP ${resp.status} ${await resp.text()}`);
    const body = (await resp.json()) as { token: string; expiresAt: number };
    cached = { token: body.token, refreshAt: (body.expiresAt - 60) * 1000 };
    return body.token;
  };
  return async () => {
    if (cached && Date.now() < cached.refreshAt) return cached.token;
    // Concurrent calls at start-up share one request.
    pending ??= fetchToken().finally(() => {
      pending = undefined;
    });
    return pending;
  };
}

/** The tab's signed-in state. */
export interface SavedSession {
  readonly user: string;
  readonly edge: string;
  readonly token: string;
}

const SESSION_KEY = "chatmesh:session";
const positionsKey = (user: string): string => `chatmesh:positions:${user}`;
const originPositionsKey = (user: string): string => `chatmesh:origin-positions:${user}`;
const openKey = (user: string): string => `chatmesh:open:${user}`;

export function saveSession(session: SavedSession): void {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function loadSession(): SavedSession | undefined {
  try {
    const raw = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null") as Partial<SavedSession> | null;
    if (raw && typeof raw.user === "string" && typeof raw.edge === "string") {
      return { user: raw.user, edge: raw.edge, token: typeof raw.token === "string" ? raw.token : "" };
    }
  } catch {
    // fall through: no usable session
  }
  return undefined;
}

export function clearSession(user: string): void {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(positionsKey(user));
  sessionStorage.removeItem(originPositionsKey(user));
  sessionStorage.removeItem(openKey(user));
}

/** The stream positions this tab had delivered (to resume from after a reload). */
export function loadPositions(user: string): Map<string, bigint> {
  return decodePositions(sessionStorage.getItem(positionsKey(user)));
}

export function savePositions(user: string, positions: Positions): void {
  sessionStorage.setItem(positionsKey(user), encodePositions(positions));
}

/** Every-region mode: the per-origin positions this tab had delivered. */
export function loadOriginPositions(user: string): Map<string, Map<string, bigint>> {
  return decodeOriginPositions(sessionStorage.getItem(originPositionsKey(user)));
}

export function saveOriginPositions(user: string, positions: OriginPositions): void {
  // Nothing to keep in the primary mode: leave its storage as it always was.
  if (positions.size === 0 && sessionStorage.getItem(originPositionsKey(user)) === null) return;
  sessionStorage.setItem(originPositionsKey(user), encodeOriginPositions(positions));
}

export function loadOpenChannel(user: string): string | undefined {
  return sessionStorage.getItem(openKey(user)) ?? undefined;
}

export function saveOpenChannel(user: string, channelId: string): void {
  sessionStorage.setItem(openKey(user), channelId);
}
