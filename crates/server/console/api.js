// The one way the console talks to tetherd: its public API, with the bearer
// token of a login kept in sessionStorage (this tab only; ADR 0034). No
// cookie is ever set, so the browser sends no credential on its own.

const TOKEN_KEY = 'tether.token';

/** The session ended (expired, revoked, logged out elsewhere): log in again. */
export class SessionExpired extends Error {
  constructor() {
    super('Your session expired. Log in again.');
    this.name = 'SessionExpired';
  }
}

/** tetherd did not answer (down, restarting, or the network is). */
export class Unreachable extends Error {
  constructor(cause) {
    super('tetherd cannot be reached. Check that it is running and that this computer can reach it.');
    this.name = 'Unreachable';
    this.cause = cause;
  }
}

/** tetherd answered with an error: its code and message as it gave them. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message ?? `tetherd answered HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = error.code ?? 'http_error';
    this.details = error.details ?? null;
  }
}

let onExpired = () => {};

/** What to do when a call finds the session gone (the app returns to login). */
export function whenSessionExpires(handler) {
  onExpired = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * Calls `/api/v1{path}` and answers its JSON (null for an empty body);
 * `headers` adds to the request's (`If-Match`).
 * Throws Unreachable, SessionExpired (after calling the expiry handler) or
 * ApiError.
 */
export async function call(path, {method = 'GET', body, headers: extra = {}} = {}) {
  const headers = {Accept: 'application/json', ...extra};
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (cause) {
    throw new Unreachable(cause);
  }
  return answer(response, current);
}

/** The JSON of a response, or the error it is (see `call`). */
async function answer(response, sentToken) {
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (response.status === 401 && sentToken) {
    forgetToken();
    onExpired();
    throw new SessionExpired();
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

/**
 * How long a followed stream may stay silent before it is given up:
 * tetherd sends at least an empty line every 15 s, so three missed in a
 * row mean a connection that still looks open (a dropped network path, a
 * stalled proxy) and will never speak again.
 */
export const SILENCE_LIMIT_MS = 45_000;

/**
 * The silence limit in force. The one test hook: a test sets
 * sessionStorage `tether.test.silenceLimitMs` to see a stalled stream given
 * up without waiting the full limit; nothing else writes it.
 */
function silenceLimit() {
  const chosen = Number(sessionStorage.getItem('tether.test.silenceLimitMs'));
  return chosen > 0 ? chosen : SILENCE_LIMIT_MS;
}

/**
 * Follows `/api/v1{path}`, a stream of JSON lines (`application/x-ndjson`),
 * calling `onItem` with each object as it arrives, until the stream ends
 * or `signal` aborts (then it returns quietly). Empty lines are
 * keepalives; a line `{"error": …}` ends the stream as an ApiError.
 * `onOpen` runs once tetherd has answered: from then on nothing is missed.
 * `onHeard` runs at every line, keepalives included.
 * A stream silent for the silence limit (opening included) is aborted and
 * throws Unreachable. Otherwise throws as `call` does.
 */
export async function follow(path, onItem, signal, onOpen = () => {}, onHeard = () => {}) {
  const headers = {Accept: 'application/x-ndjson'};
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  // The fetch's own signal: the caller's, or the watchdog's when silent.
  const watched = new AbortController();
  const forward = () => watched.abort();
  signal?.addEventListener('abort', forward, {once: true});
  if (signal?.aborted) watched.abort();
  const limit = silenceLimit();
  let silent = false;
  let watchdog = null;
  const heard = () => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => {
      silent = true;
      watched.abort();
    }, limit);
  };
  const failed = (cause) => new Unreachable(silent ? new Error(`no line for ${limit} ms`) : cause);
  heard();
  try {
    let reader;
    try {
      const response = await fetch(`/api/v1${path}`, {headers, cache: 'no-store', credentials: 'omit', signal: watched.signal});
      if (!response.ok) {
        await answer(response, current);
        return;
      }
      reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      onOpen();
    } catch (error) {
      if (signal?.aborted) return;
      throw error instanceof ApiError || error instanceof SessionExpired ? error : failed(error);
    }
    let pending = '';
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (cause) {
        if (signal?.aborted) return;
        throw failed(cause);
      }
      if (chunk.done) return;
      const lines = (pending + chunk.value).split('\n');
      pending = lines.pop();
      for (const line of lines) {
        heard();
        onHeard();
        if (!line.trim()) continue;
        const item = JSON.parse(line);
        if (item.error) throw new ApiError(200, item);
        onItem(item);
      }
    }
  } finally {
    clearTimeout(watchdog);
    signal?.removeEventListener('abort', forward);
    // A stream left early (an error line) would otherwise stay open.
    watched.abort();
  }
}

/**
 * A WebSocket to `/api/v1{path}` on this origin. A browser's WebSocket
 * cannot send `Authorization`, so the token goes as a subprotocol,
 * `tether.bearer.<token>`, beside the tunnel protocol tetherd answers with
 * (ADR 0034): it never appears in a URL or a log.
 */
export function openSocket(path) {
  const url = new URL(`/api/v1${path}`, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const protocols = ['tether.tunnel.v1'];
  const current = token();
  if (current) protocols.push(`tether.bearer.${current}`);
  const socket = new WebSocket(url, protocols);
  socket.binaryType = 'arraybuffer';
  return socket;
}

/** Logs in and keeps the token; throws ApiError with tetherd's reason. */
export async function login(username, password) {
  forgetToken();
  const answer = await call('/login', {method: 'POST', body: {username, password}});
  sessionStorage.setItem(TOKEN_KEY, answer.token);
  return answer;
}

/** Ends the session on tetherd too; forgets the token whatever happens. */
export async function logout() {
  try {
    if (token()) await call('/logout', {method: 'POST'});
  } finally {
    forgetToken();
  }
}

/** A query string from an object, leaving out empty values. */
export function query(parameters) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/** Role order, as the API's: each may do what the ones before it may. */
const ROLES = ['viewer', 'operator', 'admin'];

/** Whether `role` may do what `least` may (docs/roles.md). */
export function atLeast(role, least) {
  return ROLES.indexOf(role) >= ROLES.indexOf(least);
}
