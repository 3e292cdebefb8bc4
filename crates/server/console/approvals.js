// Registrations under provisioning policies (ADR 0025): those waiting for
// approval first, each with what the device said about itself (its facts)
// and the device its identity matched; an operator or admin approves or
// denies them.

import {atLeast, call, query} from './api.js';
import {attempt, facts, h, loadFailure, pager, show} from './dom.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

/** The listing's filters: the API's state, and its words. */
const STATES = [
  ['pending', 'Waiting'],
  ['approved', 'Approved'],
  ['denied', 'Denied'],
  ['registered', 'Registered'],
  ['', 'All'],
];

export async function render(main, {me, params}) {
  const state = params.has('state') ? params.get('state') : 'pending';
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const href = (next, number, chosen = state) =>
    `#/approvals${query({state: chosen === 'pending' ? '' : chosen || 'all', continue: next, page: next ? number : ''})}`;
  const notice = h('p', {class: 'notice', id: 'approval-notice', role: 'status', hidden: true});
  const results = h('div', {id: 'approval-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main,
    h('h1', {}, 'Approvals'),
    h('p', {class: 'muted'}, 'Devices registering under a policy that asks for approval wait here until someone decides.'),
    h('nav', {class: 'tabs', 'aria-label': 'Registrations by state'}, h('ul', {}, STATES.map(([value, words]) =>
      h('li', {}, h('a', {href: href('', 1, value), 'aria-current': value === apiState(state) ? 'page' : false}, words))))),
    notice,
    results);
  const mayDecide = atLeast(me.role, 'operator');

  const load = async () => {
    let page;
    try {
      page = await call(`/approvals${query({state: apiState(state), limit: PAGE_SIZE, continue: token})}`);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      show(results, loadFailure(error, me.role, 'read registrations'));
      return;
    }
    if (page.items.length === 0) {
      show(results, h('p', {class: 'empty'}, apiState(state) === 'pending'
        ? 'No registration is waiting for approval.'
        : 'No registration here.'));
      return;
    }
    show(results,
      h('ul', {class: 'approvals'}, page.items.map((approval) => h('li', {},
        registration(approval, mayDecide, async (decision, body) => {
          await call(`/approvals/${encodeURIComponent(approval.id)}/${decision}`, {method: 'POST', body});
          const decided = await call(`/approvals/${encodeURIComponent(approval.id)}`);
          show(notice, decision === 'approve'
            ? ['Approved: it becomes ', h('a', {href: `#/devices/${encodeURIComponent(decided.device)}`}, decided.device),
              ' when it next asks.']
            : `Denied: the device stops when it next asks${decided.reason ? `, told “${decided.reason}”` : ''}.`);
          notice.hidden = false;
          await load();
        })))),
      pager(page, pageNumber, href));
  };
  await load();
}

/** The API's `state` for the fragment's (`all` is the API's none). */
function apiState(state) {
  return state === 'all' ? '' : state;
}

/** One registration: who asked, what it said, and (pending) the decision. */
function registration(approval, mayDecide, decide) {
  const deviceFacts = approval.facts ?? {};
  const os = deviceFacts.osRelease;
  // Hostnames repeat across a batch of hardware; the serial tells them apart.
  const serial = deviceFacts.hardwareSerial ? `serial ${deviceFacts.hardwareSerial}` : null;
  const title = [deviceFacts.hostname, serial].filter(Boolean).join(', ') || approval.id;
  const card = h('article', {class: 'approval', 'aria-labelledby': `approval-${approval.id}`, 'data-approval': approval.id},
    h('h2', {id: `approval-${approval.id}`}, title, ' ', h('span', {class: `badge state ${approval.state}`}, approval.state)),
    facts([
      ['Policy', approval.policy],
      ['Asked', timeElement(approval.createdAt)],
      ['Hardware serial', deviceFacts.hardwareSerial],
      ['Machine id', deviceFacts.machineId],
      ['Hostname', deviceFacts.hostname],
      ['Operating system', os ? (os.prettyName || [os.id, os.versionId].filter(Boolean).join(' ')) : null],
      ['CPU', deviceFacts.cpuModel ? `${deviceFacts.cpuModel} (${deviceFacts.cpuCores} cores)` : deviceFacts.cpuCores ? `${deviceFacts.cpuCores} cores` : null],
      ['Memory', deviceFacts.memoryTotalBytes ? `${(deviceFacts.memoryTotalBytes / 2 ** 30).toFixed(1)} GiB` : null],
      ['Network interfaces', Object.keys(deviceFacts.macs ?? {}).length
        ? h('ul', {class: 'plain'}, Object.entries(deviceFacts.macs).map(([iface, mac]) => h('li', {}, h('code', {}, iface), ' ', mac)))
        : null],
      ['Agent', deviceFacts.agentVersion],
      ['Provisioning key', approval.keyId ? h('code', {}, approval.keyId) : null],
      ['Device', approval.device
        ? [h('a', {href: `#/devices/${encodeURIComponent(approval.device)}`}, approval.device),
          approval.state === 'pending' ? ' (its identity matched this device: approving gives it that device’s credential)' : null]
        : null],
      ['Decided', approval.decidedAt ? [timeElement(approval.decidedAt), approval.decidedBy ? ` by ${approval.decidedBy}` : null] : null],
      ['Reason', approval.reason],
      ['Request id', h('code', {}, approval.id)],
    ]));
  if (approval.device && approval.deviceOnline && approval.state === 'pending') {
    card.append(h('p', {class: 'error'}, `${approval.device} is online now: approving moves its credential to this hardware, and the device it runs on now loses it.`));
  }
  // Deciding needs POST /approvals/{id}/approve or /deny, an operator's
  // (docs/roles.md): a viewer sees the request and no button.
  if (mayDecide && approval.state === 'pending') card.append(decision(approval, decide));
  return card;
}

function decision(approval, decide) {
  const id = approval.id;
  const name = h('input', {id: `approve-name-${id}`, name: 'name', autocomplete: 'off', spellcheck: 'false',
    placeholder: approval.device ? approval.device : 'from the policy', disabled: Boolean(approval.device)});
  const reason = h('input', {id: `deny-reason-${id}`, name: 'reason', autocomplete: 'off'});
  const error = h('p', {class: 'error', role: 'alert', hidden: true});
  const buttons = [];
  const run = (verb, body) => attempt(error, () => decide(verb, body), buttons);
  const approve = h('button', {type: 'submit', class: 'approve'}, 'Approve');
  const deny = h('button', {type: 'button', class: 'deny secondary', onclick: () =>
    run('deny', reason.value.trim() ? {reason: reason.value.trim()} : {})}, 'Deny');
  buttons.push(approve, deny);
  return h('div', {class: 'decision'},
    h('form', {class: 'approve', 'aria-label': `Approve ${id}`, onsubmit: (event) => {
      event.preventDefault();
      run('approve', name.value.trim() ? {name: name.value.trim()} : {});
    }},
      h('label', {for: `approve-name-${id}`}, 'Device name (optional)'), name, approve),
    h('div', {class: 'deny'},
      h('label', {for: `deny-reason-${id}`}, 'Reason told to the device (optional)'), reason, deny),
    error);
}
