// A device's log, live: the last minutes from the archive, then each line
// as tetherd stores it (`GET /devices/{name}/logs/follow`), newest at the
// bottom, until the page is left.

import {call, follow, query} from './api.js';
import {h} from './dom.js';
import {absolute} from './time.js';

/** Lines kept on the page; older ones are dropped from the top. */
const MAX_LINES = 1000;
/** How far back the archive is read before following. */
const RECENT = '5m';
/** How many archived lines are shown before the live ones. */
const RECENT_LINES = 200;
/** Syslog priorities 0–7 by name, as journald prints them. */
const PRIORITIES = ['emerg', 'alert', 'crit', 'err', 'warning', 'notice', 'info', 'debug'];

/**
 * The live log section of device `name`; following stops when `signal`
 * aborts (the page is left).
 */
export function logsSection(name, signal) {
  const device = encodeURIComponent(name);
  const lines = h('ol', {class: 'log-lines', id: 'log-lines', 'aria-live': 'polite', 'aria-relevant': 'additions'});
  const state = h('span', {class: 'muted', id: 'log-state'}, 'Loading…');
  const empty = h('p', {class: 'empty', id: 'log-empty'}, 'No log lines in the last 5 minutes. New ones appear here as the device sends them.');
  const error = h('p', {class: 'error', role: 'alert', hidden: true});
  // While paused, lines are held back (still counted) and shown on resume.
  let paused = false;
  let held = [];
  const seen = new Set();
  const pause = h('button', {type: 'button', class: 'secondary', id: 'log-pause', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) {
      showLines(held);
      held = [];
    }
    showState();
  }}, 'Pause');
  const showState = () => {
    state.textContent = paused
      ? `Paused${held.length ? `: ${held.length} new line${held.length === 1 ? '' : 's'} waiting` : ''}`
      : 'Following';
  };
  const showLines = (entries) => {
    // A line may come from the archive and the follower both.
    const fresh = entries.filter((entry) => !seen.has(entry.pos));
    if (!fresh.length) return;
    for (const entry of fresh) seen.add(entry.pos);
    const scroller = lines.parentElement;
    const atBottom = !scroller || scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    lines.append(...fresh.map(line));
    while (lines.childElementCount > MAX_LINES) {
      seen.delete(Number(lines.firstElementChild.dataset.pos));
      lines.firstElementChild.remove();
    }
    empty.hidden = true;
    if (atBottom && scroller) scroller.scrollTop = scroller.scrollHeight;
  };
  // Live lines wait until the archive's are shown, so the order holds.
  let early = [];
  const arrived = (entry) => {
    if (early) early.push(entry);
    else if (paused) {
      held.push(entry);
      showState();
    } else {
      showLines([entry]);
    }
  };
  const section = h('section', {'aria-labelledby': 'logs-title', class: 'logs'},
    h('h2', {id: 'logs-title'}, 'Logs'),
    h('div', {class: 'toolbar'}, pause, state),
    h('div', {class: 'log-scroll', tabindex: '0', 'aria-label': 'Log lines, newest last'}, lines),
    empty,
    error);
  const start = async () => {
    // Follow first, and read the archive once tetherd follows: no line
    // stored meanwhile is missed (one in both is shown once).
    let opened;
    const open = new Promise((resolve) => {
      opened = resolve;
    });
    const following = follow(`/devices/${device}/logs/follow`, arrived, signal, opened);
    await Promise.race([open, following]);
    if (signal.aborted) return;
    try {
      const recent = await call(`/devices/${device}/logs${query({since: RECENT, limit: RECENT_LINES})}`);
      showLines(recent.items);
    } catch (failure) {
      if (failure.name !== 'ApiError') throw failure;
      error.textContent = `The last minutes could not be read: ${failure.message}`;
      error.hidden = false;
    }
    showLines(early);
    early = null;
    showState();
    await following;
    if (!signal.aborted) state.textContent = 'Stopped: tetherd ended the stream. Reload the page to follow again.';
  };
  start().catch((failure) => {
    if (signal.aborted || failure.name === 'SessionExpired') return;
    state.textContent = 'Stopped';
    error.textContent = `Following the log stopped: ${failure.message}`;
    error.hidden = false;
  });
  return section;
}

/** One log line: time, priority, unit, message. */
function line(entry) {
  const priority = PRIORITIES[entry.priority] ?? String(entry.priority);
  const at = new Date(entry.at);
  return h('li', {class: `log-line priority-${priority}`, 'data-pos': entry.pos},
    h('time', {datetime: entry.at, title: absolute(entry.at)}, at.toLocaleTimeString()),
    ' ', h('span', {class: 'log-priority'}, priority),
    ' ', h('span', {class: 'log-unit'}, entry.unit),
    ' ', h('span', {class: 'log-message'}, entry.message));
}
