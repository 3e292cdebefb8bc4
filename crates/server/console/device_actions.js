// A device's recent actions (`GET /devices/{name}/actions`, newest first):
// what ran, how it ended and with what result, when.

import {call, query} from './api.js';
import {errorBox, h, show} from './dom.js';
import {timeElement} from './time.js';

/** How many of the newest actions are read. */
const RECENT = 50;
/**
 * Sent by tetherd itself while someone follows the device's log (this page
 * does): listed, they would crowd out what people ran.
 */
const UNLISTED = ['follow-logs'];
/** States an action is still in before it ends. */
const RUNNING = ['queued', 'pending', 'delivered'];

/** The section, filled once its actions arrive; `load()` reads them again. */
export function actionHistorySection(name) {
  const body = h('div', {id: 'action-history'}, h('p', {class: 'loading'}, 'Loading…'));
  const section = h('section', {'aria-labelledby': 'history-title'},
    h('h2', {id: 'history-title'}, 'Recent actions'),
    body);
  section.load = async () => {
    let page;
    try {
      page = await call(`/devices/${encodeURIComponent(name)}/actions${query({limit: RECENT})}`);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      show(body, errorBox(error));
      return;
    }
    const listed = page.items.filter((action) => !UNLISTED.includes(action.action));
    const unlisted = page.items.length - listed.length;
    show(body, listed.length === 0
      ? h('p', {class: 'empty'}, 'No action has been run on this device yet.')
      : h('table', {},
        h('thead', {}, h('tr', {},
          h('th', {scope: 'col'}, 'Action'),
          h('th', {scope: 'col'}, 'State'),
          h('th', {scope: 'col'}, 'Result'),
          h('th', {scope: 'col'}, 'Requested'),
          h('th', {scope: 'col'}, 'Finished'))),
        h('tbody', {}, listed.map(row))),
    unlisted
      ? h('p', {class: 'muted'}, `Not listed: ${unlisted} follow-logs action${unlisted === 1 ? '' : 's'}, which tetherd sends while the log is followed.`)
      : null);
  };
  return section;
}

function row(action) {
  const outcome = action.state === 'succeeded' ? 'succeeded' : RUNNING.includes(action.state) ? 'running' : 'failed';
  return h('tr', {},
    h('td', {}, h('code', {}, action.action), action.jobId ? h('span', {class: 'muted'}, ' (job)') : null),
    h('td', {}, h('span', {class: `state ${outcome}`}, action.state)),
    h('td', {}, result(action)),
    h('td', {}, timeElement(action.createdAt)),
    h('td', {}, action.completedAt ? timeElement(action.completedAt) : h('span', {class: 'muted'}, '—')));
}

/** The status and the start of the response, the whole of it on demand. */
function result(action) {
  const status = action.statusCode !== null && action.statusCode !== undefined
    ? `${action.statusCode}${action.statusMessage ? ` ${action.statusMessage}` : ''}`
    : null;
  const response = action.response === null || action.response === undefined
    ? null
    : typeof action.response === 'string' ? action.response : JSON.stringify(action.response, null, 2);
  if (!response) return status ?? h('span', {class: 'muted'}, '—');
  return h('details', {},
    h('summary', {}, status ?? 'response'),
    h('pre', {class: 'response'}, response));
}
