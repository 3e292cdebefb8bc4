// A device's log, live: the last minutes from the archive, then each line
// as tetherd stores it (`GET /devices/{name}/logs/follow`), newest at the
// bottom, until the page is left; followed again when the stream breaks.

import {call, follow, query} from './api.js';
import {h} from './dom.js';
import {absolute} from './time.js';

/** Lines kept on the page; older ones are dropped from the top. */
const MAX_LINES = 1000;
/** How far back the archive is read before following. */
const RECENT = '5m';
/** How many archived lines are shown before the live ones. */
const RECENT_LINES = 200;
/** The first pause before following again after a break, and the longest. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 15_000;
/**
 * After a break, the archive is read from this many seconds before the
 * last line or keepalive was heard: lines still on their way then, and
 * devices whose clock is a little behind tetherd's.
 */
const GAP_MARGIN_S = 60;
/** A gap is read in pages of this many lines, at most this many pages. */
const GAP_PAGE_LINES = 1000;
const GAP_PAGES = 10;
const DAY_MS = 86_400_000;
/** Syslog priorities 0–7 by name, as journald prints them. */
const PRIORITIES = ['emerg', 'alert', 'crit', 'err', 'warning', 'notice', 'info', 'debug'];

/**
 * The live log section of device `name`; following stops when `signal`
 * aborts (the page is left). A broken or silent stream is followed again
 * after a pause, and the lines stored meanwhile are read from the archive.
 */
export function logsSection(name, signal) {
  const device = encodeURIComponent(name);
  const lines = h('ol', {class: 'log-lines', id: 'log-lines', 'aria-live': 'polite', 'aria-relevant': 'additions'});
  const state = h('span', {class: 'muted', id: 'log-state', role: 'status'}, 'Loading…');
  const empty = h('p', {class: 'empty', id: 'log-empty'}, 'No log lines in the last 5 minutes. New ones appear here as the device sends them.');
  const error = h('p', {class: 'error', role: 'alert', hidden: true});
  // While paused, lines are held back (still counted) and shown on resume.
  let paused = false;
  let held = [];
  let reconnecting = false;
  // Lines received (shown or held), by their per-device number `pos`,
  // and the highest: a line stored later has a higher one.
  const seen = new Set();
  let newestPos = -1;
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
    const following = paused
      ? `Paused${held.length ? `: ${held.length} new line${held.length === 1 ? '' : 's'} waiting` : ''}`
      : 'Following';
    state.textContent = reconnecting ? `Reconnecting…${paused ? ' (paused)' : ''}` : following;
  };
  const showLines = (entries) => {
    if (!entries.length) return;
    const scroller = lines.parentElement;
    const atBottom = !scroller || scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    lines.append(...entries.map(line));
    while (lines.childElementCount > MAX_LINES) {
      seen.delete(Number(lines.firstElementChild.dataset.pos));
      lines.firstElementChild.remove();
    }
    empty.hidden = true;
    if (atBottom && scroller) scroller.scrollTop = scroller.scrollHeight;
  };
  /** Shows (or holds, while paused) the lines not received before. */
  const deliver = (entries) => {
    // A line may come from the archive and the follower both.
    const fresh = [];
    for (const entry of entries) {
      if (seen.has(entry.pos)) continue;
      seen.add(entry.pos);
      newestPos = Math.max(newestPos, entry.pos);
      fresh.push(entry);
    }
    if (paused) {
      held.push(...fresh);
      showState();
    } else {
      showLines(fresh);
    }
  };
  // Live lines wait until the archive's are shown, so the order holds.
  let early = [];
  const arrived = (entry) => {
    if (early) early.push(entry);
    else deliver([entry]);
  };
  const section = h('section', {'aria-labelledby': 'logs-title', class: 'logs'},
    h('h2', {id: 'logs-title'}, 'Logs'),
    h('div', {class: 'toolbar'}, pause, state),
    h('div', {class: 'log-scroll', tabindex: '0', 'aria-label': 'Log lines, newest last'}, lines),
    empty,
    error);
  const showError = (text) => {
    error.textContent = text;
    error.hidden = false;
  };
  /**
   * The archive's lines before following: the last minutes the first time;
   * after a break, those stored since shortly before the last line or
   * keepalive was heard (`heardAt`) and after the newest line received.
   * The follow API has no position to resume from, so a line is lost when
   * its device-side time is older than that window: the device's clock
   * more than GAP_MARGIN_S behind tetherd's, or a spool replayed late.
   * The window ends a day ahead, for devices whose clock is. A gap of
   * more than GAP_PAGES pages shows its first lines only.
   */
  const catchUp = async (heardAt) => {
    if (heardAt === null) {
      const recent = await call(`/devices/${device}/logs${query({since: RECENT, limit: RECENT_LINES})}`);
      deliver(recent.items);
      return;
    }
    const after = newestPos;
    const since = `${Math.ceil((Date.now() - heardAt) / 1000) + GAP_MARGIN_S}s`;
    const until = new Date(Date.now() + DAY_MS).toISOString();
    let next = '';
    for (let page = 0; page < GAP_PAGES; page += 1) {
      const found = await call(`/devices/${device}/logs${query({since, until, limit: GAP_PAGE_LINES, continue: next})}`);
      deliver(found.items.filter((entry) => entry.pos > after));
      next = found.continue;
      if (!next) return;
    }
  };
  const followUntilLeft = async () => {
    let delay = RETRY_FIRST_MS;
    // When the last line or keepalive came; null before the first follow.
    let heardAt = null;
    for (;;) {
      const resumeFrom = heardAt;
      early = [];
      // Follow first, and read the archive once tetherd follows: no line
      // stored meanwhile is missed (one in both is shown once).
      let opened;
      const open = new Promise((resolve) => {
        opened = resolve;
      });
      const ended = follow(`/devices/${device}/logs/follow`, arrived, signal, () => {
        heardAt = Date.now();
        opened();
      }, () => {
        heardAt = Date.now();
      }).then(() => null, (failure) => failure);
      let failure = await Promise.race([open.then(() => undefined), ended]);
      if (signal.aborted) return;
      if (failure === undefined) {
        delay = RETRY_FIRST_MS;
        try {
          await catchUp(resumeFrom);
          error.hidden = true;
        } catch (missed) {
          if (missed.name === 'SessionExpired') return;
          showError(`${resumeFrom === null ? 'The last minutes' : 'The lines stored while the log was not followed'} could not be read: ${missed.message}`);
        }
        deliver(early);
        early = null;
        reconnecting = false;
        showState();
        failure = await ended;
      }
      if (signal.aborted || failure?.name === 'SessionExpired') return;
      if (failure?.name === 'ApiError' && failure.status >= 400 && failure.status < 500 && failure.status !== 429) {
        // Refused (the device deleted, a role changed): asking again would be too.
        state.textContent = 'Stopped';
        showError(`Following the log stopped: ${failure.message}`);
        return;
      }
      // Ended, broken, silent, or tetherd busy: follow again after a pause.
      reconnecting = true;
      showState();
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      if (signal.aborted) return;
    }
  };
  followUntilLeft().catch((failure) => {
    if (signal.aborted) return;
    state.textContent = 'Stopped';
    showError(`Following the log stopped: ${failure.message}`);
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
