// Alerts the fleet monitor raised, newest first: by state (those not yet
// resolved unless another is chosen), with severity, the device, and when;
// an operator or admin acknowledges a firing one. The list is read again
// when the live feed says the alerts changed.

import {atLeast, call, query} from './api.js';
import {attempt, h, loadFailure, pager, show} from './dom.js';
import {listen} from './live.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

/** The API's `state` filters, and their words. */
const STATES = [
  ['active', 'Not resolved'],
  ['firing', 'Firing'],
  ['acknowledged', 'Acknowledged'],
  ['resolved', 'Resolved'],
  ['all', 'All'],
];

export async function render(main, {me, params}) {
  const state = STATES.some(([value]) => value === params.get('state')) ? params.get('state') : 'active';
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const href = (next, number, chosen = state) =>
    `#/alerts${query({state: chosen === 'active' ? '' : chosen, continue: next, page: next ? number : ''})}`;
  const mayAcknowledge = atLeast(me.role, 'operator');
  const error = h('p', {class: 'error', role: 'alert', id: 'alert-error', hidden: true});
  const results = h('div', {class: 'results', id: 'alert-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main,
    h('h1', {}, 'Alerts'),
    h('nav', {class: 'tabs', 'aria-label': 'Alerts by state'}, h('ul', {}, STATES.map(([value, words]) =>
      h('li', {}, h('a', {href: href('', 1, value), 'aria-current': value === state ? 'page' : false}, words))))),
    // Deliveries are an operator's to read (docs/roles.md).
    mayAcknowledge ? h('p', {}, h('a', {href: '#/alerts/deliveries'}, 'How alerts were delivered')) : null,
    error,
    results);

  const acknowledge = async (alert, button) => {
    const done = await attempt(error, () => call(`/alerts/${alert.id}/acknowledge`, {method: 'POST'}), [button]);
    if (done) await load();
  };

  const load = async () => {
    let page;
    try {
      page = await call(`/alerts${query({state, limit: PAGE_SIZE, continue: token})}`);
    } catch (failure) {
      if (failure.name !== 'ApiError') throw failure;
      show(results, loadFailure(failure, me.role, 'read alerts'));
      return;
    }
    if (page.items.length === 0) {
      show(results, h('p', {class: 'empty'}, state === 'active' || state === 'firing' ? 'No alert is firing.' : 'No alert here.'));
      return;
    }
    show(results,
      h('table', {class: 'alerts'},
        h('thead', {}, h('tr', {},
          h('th', {scope: 'col'}, 'Severity'), h('th', {scope: 'col'}, 'Alert'), h('th', {scope: 'col'}, 'Device'),
          h('th', {scope: 'col'}, 'State'), h('th', {scope: 'col'}, 'Started'),
          mayAcknowledge ? h('th', {scope: 'col'}, h('span', {class: 'visually-hidden'}, 'Acknowledge')) : null)),
        h('tbody', {}, page.items.map((alert) => h('tr', {class: `severity-${alert.severity}`, 'data-alert': alert.id},
          h('td', {}, h('span', {class: 'badge'}, alert.severity)),
          h('th', {scope: 'row'}, alert.summary, h('div', {class: 'muted'}, 'rule ', h('code', {}, alert.rule))),
          h('td', {}, alert.device ? h('a', {href: `#/devices/${encodeURIComponent(alert.device)}`}, alert.device) : '—'),
          h('td', {}, h('span', {class: `state ${alert.state}`}, alert.state),
            alert.acknowledgedAt
              ? h('div', {class: 'muted'}, `by ${alert.acknowledgedBy ?? 'someone'} `, timeElement(alert.acknowledgedAt))
              : null,
            alert.resolvedAt ? h('div', {class: 'muted'}, 'resolved ', timeElement(alert.resolvedAt)) : null),
          h('td', {}, timeElement(alert.startedAt)),
          mayAcknowledge
            ? h('td', {}, alert.state === 'firing'
              ? h('button', {type: 'button', class: 'acknowledge', 'aria-label': `Acknowledge: ${alert.summary}`,
                onclick: (event) => acknowledge(alert, event.currentTarget)}, 'Acknowledge')
              : null)
            : null)))),
      pager(page, pageNumber, href));
  };
  await load();
  listen((change) => {
    if (change.resync || change.alerts) load();
  });
}
