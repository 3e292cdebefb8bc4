// The fleet at a glance: devices online and offline, the same by the value
// of a label, and the alerts firing now.

import {call, query} from './api.js';
import {errorBox, h, show} from './dom.js';
import {timeElement} from './time.js';
import {listen, throttled} from './live.js';

/** How many firing alerts are counted before saying "at least". */
const ALERT_COUNT_LIMIT = 1000;
/** How many devices are read to offer their label keys for grouping. */
const LABEL_SAMPLE = 200;
/** A fleet reconnecting at once reloads the counts this often at most. */
const REFRESH_MS = 2_000;
/** How many deployments are read for the rollouts under way. */
const DEPLOYMENT_LIMIT = 200;
/** The events that change the counts. */
const PRESENCE_EVENTS = new Set(['device-online', 'device-offline']);

export async function render(main, {params, navigate}) {
  const by = params.get('by') ?? '';
  show(main, h('h1', {}, 'Overview'), h('p', {class: 'loading'}, 'Loading…'));
  const fill = () => load(main, by, navigate);
  await fill();
  const refill = throttled(fill, REFRESH_MS);
  listen((change) => {
    if (change.resync || change.alerts || PRESENCE_EVENTS.has(change.event?.event)) refill();
  });
}

/** Reads the counts, alerts and groups and shows them. */
async function load(main, by, navigate) {
  const [summary, alerts, sample, deployments] = await Promise.all([
    call(`/devices/summary${query({by})}`).catch((error) => error),
    call(`/alerts${query({state: 'firing', limit: ALERT_COUNT_LIMIT})}`).catch((error) => error),
    call(`/devices${query({limit: LABEL_SAMPLE})}`).catch((error) => error),
    call(`/deployments${query({limit: DEPLOYMENT_LIMIT})}`).catch((error) => error),
  ]);
  for (const answer of [summary, alerts, sample, deployments]) {
    if (answer instanceof Error && answer.name !== 'ApiError') throw answer;
  }
  show(main,
    h('h1', {}, 'Overview'),
    summary instanceof Error ? errorBox(summary) : counts(summary.total, alerts),
    alerts instanceof Error ? errorBox(alerts) : firing(alerts),
    deployments instanceof Error ? errorBox(deployments) : rollouts(deployments),
    summary instanceof Error ? null : groups(summary, by, sample instanceof Error ? [] : sample.items, navigate));
}

function counts(total, alerts) {
  const alertCount = alerts instanceof Error ? '?' : `${alerts.items.length}${alerts.continue ? '+' : ''}`;
  // A card links only where a page lists what it counts.
  const card = (label, value, kind, href) =>
    h(href ? 'a' : 'div', {class: `card ${kind}`, href}, h('span', {class: 'count'}, value), h('span', {class: 'what'}, label));
  return h('section', {class: 'cards', 'aria-label': 'Fleet counts'},
    card('devices', total.total, 'total', '#/devices'),
    card('online', total.online, 'online'),
    card('offline', total.offline, 'offline'),
    card(alertCount === '1' ? 'alert firing' : 'alerts firing', alertCount, alertCount === '0' ? 'quiet' : 'firing', '#/alerts?state=firing'));
}

function firing(alerts) {
  const section = h('section', {'aria-labelledby': 'firing-title'}, h('h2', {id: 'firing-title'}, 'Firing alerts'));
  if (alerts.items.length === 0) {
    section.append(h('p', {class: 'empty'}, 'No alert is firing.'));
    return section;
  }
  section.append(h('ul', {class: 'alerts'}, alerts.items.slice(0, 10).map((alert) =>
    h('li', {class: `severity-${alert.severity}`},
      h('span', {class: 'badge'}, alert.severity), ' ',
      alert.device ? h('a', {href: `#/devices/${encodeURIComponent(alert.device)}`}, alert.device) : null,
      alert.device ? ': ' : null,
      alert.summary, ' ',
      h('span', {class: 'muted'}, 'since ', timeElement(alert.startedAt))))));
  if (alerts.items.length > 10) {
    section.append(h('p', {class: 'muted'}, `and ${alerts.items.length - 10}${alerts.continue ? '+' : ''} more`));
  }
  return section;
}

/** The deployments whose rollout has not finished: moving, paused or being removed. */
function rollouts(deployments) {
  const unfinished = deployments.items.filter((deployment) => deployment.rollout !== 'complete');
  const section = h('section', {'aria-labelledby': 'rollouts-title'}, h('h2', {id: 'rollouts-title'}, 'Rollouts under way'));
  if (unfinished.length === 0) {
    section.append(h('p', {class: 'empty'}, deployments.items.length
      ? 'Every deployment is rolled out.'
      : 'No deployment yet.'));
    return section;
  }
  section.append(h('ul', {class: 'rollouts'}, unfinished.map((deployment) => h('li', {},
    h('a', {href: `#/deployments/${encodeURIComponent(deployment.name)}`}, deployment.name), ' ',
    h('span', {class: `badge phase-${deployment.rollout}`}, deployment.rollout), ' ',
    h('span', {class: 'muted'}, `revision ${deployment.revision}, changed `, timeElement(deployment.updatedAt))))));
  return section;
}

/** Counts per value of label `by`, with a form to choose the label. */
function groups(summary, by, sample, navigate) {
  const keys = [...new Set(sample.flatMap((device) => Object.keys(device.labels)))].sort();
  if (by && !keys.includes(by)) keys.unshift(by);
  const select = h('select', {id: 'group-by', name: 'by'},
    h('option', {value: ''}, '(choose a label)'),
    keys.map((key) => h('option', {value: key, selected: key === by}, key)));
  select.addEventListener('change', () => navigate(`/${select.value ? `?by=${encodeURIComponent(select.value)}` : ''}`));
  const section = h('section', {'aria-labelledby': 'groups-title'},
    h('h2', {id: 'groups-title'}, 'By label'),
    h('p', {}, h('label', {for: 'group-by'}, 'Group devices by '), select));
  if (!by) {
    if (keys.length === 0) section.append(h('p', {class: 'empty'}, 'No device has a label yet.'));
    return section;
  }
  const selectorFor = (value) => (value === null ? `!${by}` : `${by}=${value}`);
  section.append(h('table', {class: 'groups'},
    h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, by), h('th', {scope: 'col'}, 'online'),
      h('th', {scope: 'col'}, 'offline'), h('th', {scope: 'col'}, 'total'), h('th', {scope: 'col'}, 'share online'))),
    h('tbody', {}, summary.groups.map((group) =>
      h('tr', {},
        h('th', {scope: 'row'}, h('a', {href: `#/devices?selector=${encodeURIComponent(selectorFor(group.value))}`},
          group.value ?? `(no ${by})`)),
        h('td', {}, group.online), h('td', {}, group.offline), h('td', {}, group.total),
        h('td', {}, h('meter', {min: 0, max: group.total || 1, value: group.online, title: `${group.online} of ${group.total} online`})))))));
  return section;
}
