// Fleet-wide jobs, newest first, with their progress, in pages of the
// API's `continue` tokens; an operator or admin may start one.

import {atLeast, call, query} from './api.js';
import {h, loadFailure, pager, show} from './dom.js';
import {countsBar, devices, progressWords} from './job.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

export async function render(main, {me, params}) {
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const results = h('div', {class: 'results', id: 'job-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main,
    h('h1', {}, 'Jobs'),
    h('p', {class: 'muted'}, 'An action run on every device a label selector matches, as ', h('code', {}, 'tether actions run -l'), ' does.'),
    // Starting one needs POST /jobs, an operator's (docs/roles.md).
    atLeast(me.role, 'operator') ? h('p', {}, h('a', {class: 'button', href: '#/jobs/new', id: 'start-job'}, 'Start a job')) : null,
    results);
  let page;
  try {
    page = await call(`/jobs${query({limit: PAGE_SIZE, continue: token})}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(results, loadFailure(error, me.role, 'read jobs'));
    return;
  }
  if (page.items.length === 0) {
    show(results, h('p', {class: 'empty'}, pageNumber > 1 ? 'No more jobs.' : 'No job yet.'));
    return;
  }
  show(results,
    h('table', {class: 'jobs'},
      h('caption', {class: 'muted'}, `Page ${pageNumber}, ${page.items.length} job${page.items.length === 1 ? '' : 's'}, newest first`),
      h('thead', {}, h('tr', {},
        h('th', {scope: 'col'}, 'Action'), h('th', {scope: 'col'}, 'Devices'), h('th', {scope: 'col'}, 'State'),
        h('th', {scope: 'col'}, 'Progress'), h('th', {scope: 'col'}, 'Started'))),
      h('tbody', {}, page.items.map((job) => h('tr', {},
        h('th', {scope: 'row'}, h('a', {href: `#/jobs/${encodeURIComponent(job.id)}`}, job.action)),
        h('td', {}, h('code', {}, job.labelSelector), h('div', {class: 'muted'}, devices(job.devices))),
        h('td', {}, h('span', {class: `state ${job.state}`}, job.state)),
        h('td', {}, countsBar(job), h('div', {class: 'muted'}, progressWords(job))),
        h('td', {}, timeElement(job.createdAt)))))),
    pager(page, pageNumber, (next, number) => `#/jobs${query({continue: next, page: next ? number : ''})}`));
}
