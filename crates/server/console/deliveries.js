// How alerts were delivered to their receivers, newest first, and why a
// delivery failed; an operator sends a given-up one (dead) again. tetherd
// lets operators and admins read them (docs/roles.md): a viewer gets the
// forbidden state.

import {call, query} from './api.js';
import {attempt, h, loadFailure, pager, show} from './dom.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

export async function render(main, {me, params}) {
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const crumb = h('p', {class: 'breadcrumb'}, h('a', {href: '#/alerts'}, 'Alerts'));
  const error = h('p', {class: 'error', role: 'alert', id: 'delivery-error', hidden: true});
  const results = h('div', {class: 'results', id: 'delivery-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main, crumb, h('h1', {}, 'Alert deliveries'), error, results);

  const retry = async (delivery, button) => {
    const done = await attempt(error, () =>
      call(`/alerts/deliveries/${encodeURIComponent(delivery.id)}/retry`, {method: 'POST'}), [button]);
    if (done) await load();
  };

  const load = async () => {
    let page;
    try {
      page = await call(`/alerts/deliveries${query({limit: PAGE_SIZE, continue: token})}`);
    } catch (failure) {
      if (failure.name !== 'ApiError') throw failure;
      show(results, loadFailure(failure, me.role, 'read alert deliveries'));
      return;
    }
    if (page.items.length === 0) {
      show(results, h('p', {class: 'empty'}, 'No alert was sent to a receiver yet.'));
      return;
    }
    show(results,
      h('table', {class: 'deliveries'},
        h('thead', {}, h('tr', {},
          h('th', {scope: 'col'}, 'Receiver'), h('th', {scope: 'col'}, 'Alert'), h('th', {scope: 'col'}, 'State'),
          h('th', {scope: 'col'}, 'Attempts'), h('th', {scope: 'col'}, 'Created'), h('th', {scope: 'col'}, 'Last error'))),
        h('tbody', {}, page.items.map((delivery) => h('tr', {},
          h('th', {scope: 'row'}, delivery.receiver),
          h('td', {}, `${delivery.rule} ${delivery.event} on `,
            h('a', {href: `#/devices/${encodeURIComponent(delivery.device)}`}, delivery.device)),
          h('td', {}, h('span', {class: `state ${delivery.state === 'delivered' ? 'succeeded' : delivery.state === 'dead' ? 'failed' : 'running'}`}, delivery.state),
            delivery.nextAttemptAt ? h('div', {class: 'muted'}, 'next ', timeElement(delivery.nextAttemptAt)) : null,
            delivery.deliveredAt ? h('div', {class: 'muted'}, timeElement(delivery.deliveredAt)) : null),
          h('td', {}, delivery.attempts),
          h('td', {}, timeElement(delivery.createdAt)),
          h('td', {}, delivery.lastError ?? '—',
            delivery.state === 'dead'
              ? h('div', {}, h('button', {type: 'button', class: 'secondary', onclick: (event) => retry(delivery, event.currentTarget)}, 'Send again'))
              : null))))),
      pager(page, pageNumber, (next, number) => `#/alerts/deliveries${query({continue: next, page: next ? number : ''})}`));
  };
  await load();
}
