// One fleet-wide job: its counts by state as a bar, its per-device results
// (each device a link), and, for an operator or admin, a way to cancel it.
// Until its last action has ended, the page asks tetherd again every
// second; it stops then, or when the page is left.

import {atLeast, call, query} from './api.js';
import {attempt, facts, h, loadFailure, pager, show, stackedBar} from './dom.js';
import {timeElement} from './time.js';

/** How often a running job's counts and results are read again. */
const POLL_MS = 1000;
const PAGE_SIZE = 100;

/**
 * The action states in the order the bar shows them (ended first), with
 * the API's name of each and its key in a job's `counts`.
 */
const STATES = [
  ['succeeded', 'succeeded'],
  ['failed', 'failed'],
  ['rejected', 'rejected'],
  ['timed-out', 'timedOut'],
  ['expired', 'expired'],
  ['cancelled', 'cancelled'],
  ['delivered', 'delivered'],
  ['pending', 'pending'],
  ['queued', 'queued'],
];

/** States in which a device's action has not ended yet. */
const OPEN = ['delivered', 'pending', 'queued'];

/** "1 device", "2 devices". */
export function devices(count) {
  return `${count} device${count === 1 ? '' : 's'}`;
}

/** How many of the job's devices have ended, and how, in words. */
export function progressWords(job) {
  const open = OPEN.reduce((sum, state) => sum + job.counts[STATES.find(([name]) => name === state)[1]], 0);
  const parts = STATES.filter(([, key]) => job.counts[key] > 0).map(([name, key]) => `${job.counts[key]} ${name}`);
  return `${job.devices - open} of ${job.devices} ended${parts.length ? `: ${parts.join(', ')}` : ''}`;
}

/** The job's counts as one stacked bar, a segment per state. */
export function countsBar(job) {
  return stackedBar(STATES.map(([name, key]) => [job.counts[key], name]), job.devices,
    {className: 'counts-bar', label: progressWords(job)});
}

export async function render(main, {me, id, params}) {
  const filter = params.get('state') ?? '';
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const here = `#/jobs/${encodeURIComponent(id)}`;
  const crumb = h('p', {class: 'breadcrumb'}, h('a', {href: '#/jobs'}, 'Jobs'));
  show(main, crumb, h('h1', {}, 'Job'), h('p', {class: 'loading'}, 'Loading…'));

  const read = () => Promise.all([
    call(`/jobs/${encodeURIComponent(id)}`),
    call(`/jobs/${encodeURIComponent(id)}/actions${query({state: filter, limit: PAGE_SIZE, continue: token})}`),
  ]);
  let job;
  let actions;
  try {
    [job, actions] = await read();
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, crumb, h('h1', {}, 'Job'), loadFailure(error, me.role, 'read jobs'));
    return;
  }

  const state = h('span', {class: 'badge', id: 'job-state'});
  const words = h('p', {id: 'job-words', 'aria-live': 'polite'});
  const progress = h('div', {class: 'progress'});
  const legend = h('ul', {class: 'counts', id: 'job-counts'});
  const summary = h('div', {});
  const results = h('div', {class: 'results', id: 'job-results'});
  const refreshError = h('p', {class: 'error', role: 'alert', id: 'job-refresh-error', hidden: true});
  const cancelError = h('p', {class: 'error', role: 'alert', id: 'cancel-error', hidden: true});
  // Cancelling needs POST /jobs/{id}/cancel, an operator's (docs/roles.md).
  const cancel = atLeast(me.role, 'operator')
    ? h('button', {type: 'button', class: 'secondary', id: 'cancel-job', onclick: () => cancelJob()}, 'Cancel the job')
    : null;
  show(main, crumb,
    h('h1', {}, h('code', {}, job.action), ' on ', h('code', {}, job.labelSelector), ' ', state),
    h('section', {'aria-labelledby': 'progress-title'},
      h('h2', {id: 'progress-title'}, 'Progress'), progress, words, legend, refreshError, cancel, cancelError),
    h('section', {'aria-labelledby': 'results-title'},
      h('h2', {id: 'results-title'}, 'Devices'),
      filter ? h('p', {}, `Only those ${filter}. `, h('a', {href: here}, 'Show every device.')) : null,
      results),
    summary);

  const showJob = () => {
    state.textContent = job.state;
    state.className = `badge state ${job.state}`;
    const said = progressWords(job);
    if (words.textContent !== said) words.textContent = said;
    show(progress, countsBar(job));
    show(legend, STATES.filter(([, key]) => job.counts[key] > 0).map(([name, key]) =>
      h('li', {'data-state': name},
        h('a', {href: `${here}?state=${name}`, title: `Only the devices whose action is ${name}`},
          h('span', {class: `swatch ${name}`, 'aria-hidden': 'true'}), `${job.counts[key]} ${name}`))));
    if (cancel) cancel.hidden = job.state !== 'running';
    show(summary, h('section', {'aria-labelledby': 'job-title'},
      h('h2', {id: 'job-title'}, 'Job'),
      facts([
        ['Id', h('code', {}, job.id)],
        ['Devices', h('a', {href: `#/devices?selector=${encodeURIComponent(job.labelSelector)}`},
          `${devices(job.devices)} matching ${job.labelSelector}`)],
        ['Input', h('pre', {class: 'input'}, JSON.stringify(job.input ?? {}, null, 2))],
        ['Started', timeElement(job.createdAt)],
        ['Finished', job.finishedAt ? timeElement(job.finishedAt) : null],
        ['Cancelled', job.cancelledAt ? timeElement(job.cancelledAt) : null],
        ['Limits', [job.concurrency ? `${job.concurrency} at once` : null,
          job.ratePerSecond ? `${job.ratePerSecond} started a second` : null].filter(Boolean).join(', ') || 'none'],
        ['Waits', `${job.ttlSeconds} s for the device, then ${job.timeoutSeconds} s for its answer`],
      ])));
    showResults(results, actions, filter, pageNumber,
      (next, number) => `${here}${query({state: filter, continue: next, page: next ? number : ''})}`);
  };
  showJob();

  // Stops when another page is shown (this `main` is replaced) or the
  // fragment changes, and once the job's last action has ended (a
  // cancelled job's delivered actions still end on their own).
  let stopped = false;
  let timer = null;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  window.addEventListener('hashchange', stop, {once: true});
  const schedule = () => {
    if (!stopped && !job.finishedAt) timer = setTimeout(refresh, POLL_MS);
  };
  const refresh = async () => {
    if (!main.isConnected) stop();
    if (stopped) return;
    try {
      [job, actions] = await read();
      refreshError.hidden = true;
    } catch (error) {
      if (error.name === 'SessionExpired') {
        stop();
        return;
      }
      if (error.name !== 'ApiError' && error.name !== 'Unreachable') throw error;
      // Shown, and tried again: tetherd may be restarting.
      refreshError.textContent = `Could not refresh: ${error.message}`;
      refreshError.hidden = false;
      schedule();
      return;
    }
    if (stopped) return;
    showJob();
    schedule();
  };
  const cancelJob = async () => {
    const cancelled = await attempt(cancelError, () =>
      call(`/jobs/${encodeURIComponent(id)}/cancel`, {method: 'POST'}), [cancel]);
    if (!cancelled) return;
    job = cancelled.value;
    // The polling under way shows the devices' actions as they end.
    showJob();
  };
  schedule();
}

/** The per-device results: one row a device, linking to it. */
function showResults(results, actions, filter, pageNumber, href) {
  if (actions.items.length === 0) {
    show(results, h('p', {class: 'empty'}, filter ? `No device's action is ${filter}.` : 'No device.'));
    return;
  }
  show(results,
    h('table', {class: 'job-actions', id: 'job-actions'},
      h('thead', {}, h('tr', {},
        h('th', {scope: 'col'}, 'Device'), h('th', {scope: 'col'}, 'State'), h('th', {scope: 'col'}, 'Status'),
        h('th', {scope: 'col'}, 'Answer'), h('th', {scope: 'col'}, 'Ended'))),
      h('tbody', {}, actions.items.map((action) => h('tr', {'data-device': action.device},
        h('th', {scope: 'row'}, h('a', {href: `#/devices/${encodeURIComponent(action.device)}`}, action.device)),
        h('td', {}, h('span', {class: `state ${stateClass(action.state)}`}, action.state)),
        h('td', {}, action.statusCode ? `${action.statusCode}${action.statusMessage ? ` ${action.statusMessage}` : ''}` : '—'),
        h('td', {}, action.response === null || action.response === undefined
          ? '—'
          : h('code', {class: 'answer', title: JSON.stringify(action.response)}, brief(action.response))),
        h('td', {}, action.completedAt ? timeElement(action.completedAt) : '—'))))),
    actions.continue || pageNumber > 1 ? pager(actions, pageNumber, href) : null);
}

/** The colour class of an action's state: ended well, ended badly, or open. */
function stateClass(state) {
  if (state === 'succeeded') return 'succeeded';
  return OPEN.includes(state) ? 'running' : 'failed';
}

/** A response on one short line: the table has room for a glance. */
function brief(response) {
  const text = typeof response === 'string' ? response : JSON.stringify(response);
  return text.length > 120 ? `${text.slice(0, 119)}…` : text;
}
