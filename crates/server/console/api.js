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
 * Calls `/api/v1{path}` and answers its JSON (null for an empty body).
 * Throws Unreachable, SessionExpired (after calling the expiry handler) or
 * ApiError.
 */
export async function call(path, {method = 'GET', body} = {}) {
  const headers = {Accept: 'application/json'};
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
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  refuseFailure(response, json, current);
  return json;
}

/** Throws for an answer that is not a success, as every call does. */
function refuseFailure(response, json, sentToken) {
  if (response.status === 401 && sentToken) {
    forgetToken();
    onExpired();
    throw new SessionExpired();
  }
  if (!response.ok) throw new ApiError(response.status, json);
}

/**
 * Follows a stream of JSON lines (`/api/v1{path}`, e.g. `/events/follow`):
 * `onOpen` once tetherd answered, then `onItem` with each object until the
 * stream ends or `signal` aborts (then it returns quietly). An empty line
 * is a keepalive. Throws as `call` does; a line `{"error": …}` ends the
 * stream with an ApiError.
 */
export async function follow(path, {onItem, onOpen = () => {}, signal}) {
  const headers = {Accept: 'application/x-ndjson'};
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {headers, cache: 'no-store', credentials: 'omit', signal});
  } catch (cause) {
    if (signal?.aborted) return;
    throw new Unreachable(cause);
  }
  if (!response.ok) {
    const json = await response.json().catch(() => null);
    refuseFailure(response, json, current);
  }
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffered += value;
      let end;
      while ((end = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, end).trim();
        buffered = buffered.slice(end + 1);
        if (!line) continue;
        const item = JSON.parse(line);
        if (item.error) throw new ApiError(response.status, item);
        onItem(item);
      }
    }
  } catch (error) {
    if (signal?.aborted) return;
    if (error.name === 'ApiError') throw error;
    throw new Unreachable(error);
  }
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
