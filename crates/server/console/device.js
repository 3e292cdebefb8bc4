// One device: presence, labels, what its agent last reported (status and
// facts), its metrics, live logs and recent actions, its spec, what it can
// do, and (for an operator or admin) a terminal, a spec editor and a form
// to run one of its actions.

import {atLeast, call} from './api.js';
import {actionSection} from './action.js';
import {actionHistorySection} from './device_actions.js';
import {logsSection} from './device_logs.js';
import {metricsSection} from './device_metrics.js';
import {forwardHelp, specSection} from './device_spec.js';
import {attempt, errorBox, facts, h, presence, show} from './dom.js';
import {terminalSection} from './terminal.js';
import {timeElement} from './time.js';
import {listen, throttled} from './live.js';

/** A burst of answers reads the recent actions again at most this often. */
const HISTORY_RELOAD_MS = 1_000;
/** Ends the shown page's streams (its log follower, its terminal). */
let leaving = null;

export async function render(main, {me, name, navigate}) {
  // A page shown again (after a label edit) or left ends the last one's streams.
  leaving?.abort();
  const controller = new AbortController();
  leaving = controller;
  window.addEventListener('hashchange', () => controller.abort(), {once: true, signal: controller.signal});
  const operator = atLeast(me.role, 'operator');
  const reload = () => navigate(`/devices/${encodeURIComponent(name)}`);
  show(main, h('p', {class: 'breadcrumb'}, h('a', {href: '#/devices'}, 'Devices')), h('h1', {}, name), h('p', {class: 'loading'}, 'Loading…'));
  let device;
  try {
    device = await call(`/devices/${encodeURIComponent(name)}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, h('p', {class: 'breadcrumb'}, h('a', {href: '#/devices'}, 'Devices')), h('h1', {}, name), errorBox(error));
    return;
  }
  const status = device.status;
  const metrics = metricsSection(device.name);
  const history = actionHistorySection(device.name);
  show(main,
    h('p', {class: 'breadcrumb'}, h('a', {href: '#/devices'}, 'Devices')),
    h('h1', {}, device.name, ' ', presence(device.presence)),
    device.displayName ? h('p', {class: 'subtitle'}, device.displayName) : null,
    h('section', {'aria-labelledby': 'summary-title'},
      h('h2', {id: 'summary-title'}, 'Summary'),
      facts([
        ['Last seen', timeElement(device.lastSeen)],
        ['Enrolled', device.enrolled ? 'yes' : 'no: waiting for its agent to enroll'],
        ['Agent', device.agentVersion],
        ['Created', timeElement(device.createdAt)],
        ['Provisioning policy', device.policy],
      ])),
    labelsSection(device, operator, reload),
    statusSection(device),
    metrics,
    logsSection(device.name, controller.signal),
    // Tunnels are for operators and admins (docs/roles.md): a viewer gets no terminal.
    operator ? terminalSection(device.name, controller.signal) : null,
    history,
    specSection(device, operator, reload),
    operator ? forwardHelp(device.name) : null,
    status ? factsSection(status.facts) : null,
    device.capabilities.length
      ? h('section', {'aria-labelledby': 'capabilities-title'},
        h('h2', {id: 'capabilities-title'}, 'Actions its agent offers'),
        h('ul', {class: 'capabilities'}, device.capabilities.map((action) => h('li', {}, h('code', {}, action)))))
      : null);
  // A viewer may not run actions, so is offered no form (docs/roles.md).
  if (operator) history.after(await actionSection(device.name));
  await Promise.all([metrics.load(), history.load()]);
  // The live feed: presence changes in the heading; any other event of this
  // device (an action's answer, tetherd's own) reads the recent actions again.
  const reloadHistory = throttled(() => history.load().catch(() => {}), HISTORY_RELOAD_MS);
  const showPresence = (now) => main.querySelector('h1 .badge')?.replaceWith(presence(now));
  // After the feed was down, presence and actions are read again rather
  // than the whole page, whose log follower and terminal stay open.
  const resync = async () => {
    const fresh = await call(`/devices/${encodeURIComponent(name)}`).catch(() => null);
    if (fresh && !controller.signal.aborted) showPresence(fresh.presence);
    reloadHistory();
  };
  listen(({event, resync: missedChanges}) => {
    if (controller.signal.aborted) return;
    if (missedChanges) resync();
    if (event?.device !== device.name) return;
    if (event.event === 'device-online' || event.event === 'device-offline') {
      showPresence(event.event === 'device-online' ? 'online' : 'offline');
    } else {
      reloadHistory();
    }
  });
}

/**
 * The labels, each a link to the devices sharing it; an operator or admin
 * also adds and removes them (a viewer sees no control it may not use).
 */
function labelsSection(device, mayEdit, reload) {
  const error = h('p', {class: 'error', role: 'alert', id: 'label-error', hidden: true});
  const patch = async (labels) => {
    const done = await attempt(error, () =>
      call(`/devices/${encodeURIComponent(device.name)}`, {method: 'PATCH', body: {labels}}));
    if (done) reload();
  };
  const entries = Object.entries(device.labels);
  const section = h('section', {'aria-labelledby': 'labels-title'},
    h('h2', {id: 'labels-title'}, 'Labels'),
    entries.length === 0
      ? h('p', {class: 'empty'}, 'No labels.')
      : h('ul', {class: 'labels', id: 'device-labels'}, entries.map(([key, value]) =>
        h('li', {},
          h('a', {class: 'label', href: `#/devices?selector=${encodeURIComponent(`${key}=${value}`)}`}, `${key}=${value}`),
          mayEdit
            ? h('button', {type: 'button', class: 'remove', 'aria-label': `Remove label ${key}`, title: `Remove label ${key}`,
              onclick: () => patch({[key]: null})}, '×')
            : null))));
  if (mayEdit) {
    const key = h('input', {id: 'label-key', name: 'key', required: true, autocomplete: 'off', spellcheck: 'false'});
    const value = h('input', {id: 'label-value', name: 'value', autocomplete: 'off', spellcheck: 'false'});
    section.append(h('form', {class: 'add-label', 'aria-label': 'Set a label', onsubmit: (event) => {
      event.preventDefault();
      patch({[key.value.trim()]: value.value.trim()});
    }},
      h('label', {for: 'label-key'}, 'Key'), key,
      h('label', {for: 'label-value'}, 'Value'), value,
      h('button', {type: 'submit'}, 'Set label')),
    error);
  }
  return section;
}

function statusSection(device) {
  const status = device.status;
  const section = h('section', {'aria-labelledby': 'status-title'}, h('h2', {id: 'status-title'}, 'Status'));
  if (!status) {
    section.append(h('p', {class: 'empty'}, 'Its agent has not reported yet.'));
    return section;
  }
  const inSync = device.specInSync
    ? 'yes'
    : `no: tetherd has version ${device.specVersion ?? 0}, the agent applied ${status.specVersion}`;
  section.append(facts([
    ['Reported', timeElement(status.reportedAt)],
    ['Spec applied', inSync],
    ['Clock', status.time ? clock(status.time) : null],
    ['Watchdog', status.watchdog
      ? `${status.watchdog.mode}, ${status.watchdog.state}${status.watchdog.reason ? `: ${status.watchdog.reason}` : ''}`
      : null],
  ]));
  if (status.errors.length) {
    section.append(h('h3', {}, 'Spec sections not applied'),
      h('ul', {class: 'problems'}, status.errors.map((error) => h('li', {}, h('code', {}, error.path), ': ', error.message))));
  }
  if (status.conditions?.length) {
    section.append(h('h3', {}, 'Conditions'),
      h('ul', {class: 'problems'}, status.conditions.map((condition) =>
        h('li', {}, h('strong', {}, condition.type), ': ', condition.message ?? condition.reason, ' ',
          h('span', {class: 'muted'}, 'since ', timeElement(condition.since))))));
  }
  return section;
}

/** The device's clock against tetherd's, as the agent measured it. */
function clock(time) {
  const sync = `sync ${time.syncState}`;
  const offset = time.offsetMillis;
  if (offset === undefined) return sync;
  if (offset === 0) return `${sync}; same as tetherd's`;
  return `${sync}; ${Math.abs(offset)} ms ${offset > 0 ? 'behind' : 'ahead of'} tetherd`;
}

function factsSection(deviceFacts) {
  const os = deviceFacts.osRelease;
  const gib = deviceFacts.memoryTotalBytes ? `${(deviceFacts.memoryTotalBytes / 2 ** 30).toFixed(1)} GiB` : null;
  return h('section', {'aria-labelledby': 'facts-title'},
    h('h2', {id: 'facts-title'}, 'Facts'),
    facts([
      ['Hostname', deviceFacts.hostname],
      ['Operating system', os ? (os.prettyName || [os.id, os.versionId].filter(Boolean).join(' ')) : null],
      ['Kernel', deviceFacts.kernel],
      ['CPU', deviceFacts.cpuModel ? `${deviceFacts.cpuModel} (${deviceFacts.cpuCores} cores)` : deviceFacts.cpuCores ? `${deviceFacts.cpuCores} cores` : null],
      ['Memory', gib],
      ['Machine id', deviceFacts.machineId],
      ['Hardware serial', deviceFacts.hardwareSerial],
      ['Agent', deviceFacts.agentVersion],
      ['Kubernetes', deviceFacts.kubernetes ? `${deviceFacts.kubernetes.mode}${deviceFacts.kubernetes.cluster ? `, ${deviceFacts.kubernetes.cluster}` : ''}` : null],
      ['Network interfaces', Object.keys(deviceFacts.macs ?? {}).length
        ? h('ul', {class: 'plain'}, Object.entries(deviceFacts.macs).map(([iface, mac]) => h('li', {}, h('code', {}, iface), ' ', mac)))
        : null],
    ]));
}
