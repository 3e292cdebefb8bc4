// The audit log: who changed what through the API, every login and
// enrollment attempt and every refusal, newest first, in pages of the
// API's `continue` tokens.

import {call, query} from './api.js';
import {h, loadFailure, pager, show} from './dom.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

export async function render(main, {me, params}) {
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const results = h('div', {class: 'results', id: 'audit-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main, h('h1', {}, 'Audit log'), results);
  let page;
  try {
    page = await call(`/audit${query({limit: PAGE_SIZE, continue: token})}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(results, loadFailure(error, me.role, 'read the audit log'));
    return;
  }
  if (page.items.length === 0) {
    show(results, h('p', {class: 'empty'}, pageNumber > 1 ? 'No older entries.' : 'Nothing recorded yet.'));
    return;
  }
  show(results,
    h('table', {class: 'audit'},
      h('caption', {class: 'muted'}, `Page ${pageNumber}, ${page.items.length} entries, newest first`),
      h('thead', {}, h('tr', {},
        h('th', {scope: 'col'}, 'When'), h('th', {scope: 'col'}, 'Who'), h('th', {scope: 'col'}, 'Request'),
        h('th', {scope: 'col'}, 'Answer'), h('th', {scope: 'col'}, 'Detail'))),
      h('tbody', {}, page.items.map((entry) => h('tr', {},
        h('td', {}, timeElement(entry.at)),
        h('td', {}, entry.actor),
        h('th', {scope: 'row'}, h('code', {}, `${entry.method} ${entry.path}`)),
        h('td', {}, h('span', {class: `state ${entry.status < 400 ? 'succeeded' : 'failed'}`}, entry.status)),
        h('td', {}, entry.detail === undefined || entry.detail === null
          ? '—'
          : h('code', {class: 'detail'}, JSON.stringify(entry.detail))))))),
    pager(page, pageNumber, (next, number) => `#/audit${query({continue: next, page: next ? number : ''})}`));
}
