// The fleet's changes as tetherd stores them (`GET /events/follow`, from
// whichever replica wrote them), on one stream per tab that the page on
// show listens to: presence, action answers and alerts update without a
// reload. The stream reconnects by itself (also when it goes silent: see
// `follow`), the header says whether the page is live, and after a
// reconnect every page reads its data again: what changed while the
// stream was down was not heard.

import {follow, token} from './api.js';

const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 15_000;

/** The listeners of the page on show. */
let listeners = [];
/** Stops the running stream; null when none runs. */
let running = null;
/** Where the header shows the stream's state, and that state. */
let indicator = null;
let currentState = 'off';

/**
 * Calls `listener` with each change while this page is on show: `{event}`
 * (a device event: `device-online`, `device-offline`, an action's answer…)
 * or `{alerts}` (how many are firing and acknowledged), or `{resync: true}`
 * after the stream was down: changes may have been missed, read it all again.
 */
export function listen(listener) {
  listeners.push(listener);
}

/** Forgets the listeners of the page being left. */
export function forgetListeners() {
  listeners = [];
}

/** The header's element showing whether the page is live. */
export function statusIndicator() {
  indicator = document.createElement('span');
  indicator.className = 'live';
  indicator.setAttribute('role', 'status');
  showState(currentState);
  return indicator;
}

/** Starts the stream, unless it runs. */
export function start() {
  if (running) return;
  const controller = new AbortController();
  running = controller;
  followUntilStopped(controller.signal);
}

/** Stops the stream (logged out, session expired). */
export function stop() {
  running?.abort();
  running = null;
  showState('off');
}

async function followUntilStopped(signal) {
  let delay = RETRY_FIRST_MS;
  let connectedBefore = false;
  while (!signal.aborted && token()) {
    showState('connecting');
    try {
      await follow('/events/follow', dispatch, signal, () => {
        delay = RETRY_FIRST_MS;
        showState('live');
        if (connectedBefore) dispatch({resync: true});
        connectedBefore = true;
      });
    } catch (error) {
      // Anything else (a 503 or 429, an error line such as `too_slow`, a
      // broken or silent connection) is tried again after a pause.
      if (error.name === 'SessionExpired') return;
    }
    if (signal.aborted) return;
    showState('connecting');
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

function dispatch(change) {
  for (const listener of listeners) {
    try {
      listener(change);
    } catch (error) {
      console.error('a page could not take a live change', error);
    }
  }
}

const STATE_WORDS = {live: 'Live', connecting: 'Reconnecting…', off: ''};

function showState(state) {
  currentState = state;
  if (!indicator) return;
  indicator.dataset.state = state;
  indicator.textContent = STATE_WORDS[state];
  indicator.title = state === 'live'
    ? 'This page updates as the fleet changes'
    : 'Updates paused: tetherd’s stream of changes is being reopened';
}

/**
 * Calls `action` at most once per `intervalMs` however often it is asked,
 * the last ask always honoured: many changes in a burst reload once.
 */
export function throttled(action, intervalMs) {
  let timer = null;
  let again = false;
  const run = async () => {
    again = false;
    try {
      await action();
    } finally {
      timer = setTimeout(() => {
        timer = null;
        if (again) ask();
      }, intervalMs);
    }
  };
  const ask = () => {
    if (timer) {
      again = true;
      return;
    }
    timer = -1;
    run();
  };
  return ask;
}
