// Deployments (ADR 0029): what runs on which devices, and how each
// rollout stands. A rollout in progress is read again every few seconds
// while its page is on show; a paused one can be resumed by an operator.

import {atLeast, call, query} from './api.js';
import {errorBox, facts, h, pager, show, stackedBar} from './dom.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;
/** How often a rollout in progress is read again. */
const PROGRESS_MS = 2_000;

export async function render(main, {me, params, name}) {
  if (name) return renderOne(main, me, name);
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  show(main, h('h1', {}, 'Deployments'), h('p', {class: 'loading'}, 'Loading…'));
  let page;
  try {
    page = await call(`/deployments${query({limit: PAGE_SIZE, continue: token})}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, h('h1', {}, 'Deployments'), errorBox(error));
    return;
  }
  if (page.items.length === 0) {
    show(main, h('h1', {}, 'Deployments'),
      h('p', {class: 'empty'}, 'No deployment yet. Create one with tether deployments create.'));
    return;
  }
  show(main, h('h1', {}, 'Deployments'),
    h('table', {class: 'deployments'},
      h('thead', {}, h('tr', {},
        ['Name', 'Target', 'Runs', 'Revision', 'Rollout', 'Updated'].map((title) => h('th', {scope: 'col'}, title)))),
      h('tbody', {}, page.items.map((deployment) => h('tr', {'data-deployment': deployment.name},
        h('th', {scope: 'row'}, h('a', {href: `#/deployments/${encodeURIComponent(deployment.name)}`}, deployment.name)),
        h('td', {}, target(deployment.spec.target)),
        h('td', {}, runs(deployment.spec)),
        h('td', {}, deployment.revision),
        h('td', {}, phaseBadge(deployment.rollout)),
        h('td', {}, timeElement(deployment.updatedAt)))))),
    pager(page, pageNumber, (next, number) => `#/deployments${query({continue: next, page: next ? number : ''})}`));
}

function target({device, selector}) {
  if (device) return h('a', {href: `#/devices/${encodeURIComponent(device)}`}, device);
  if (selector) return h('a', {class: 'label', href: `#/devices?selector=${encodeURIComponent(selector)}`}, selector);
  return h('span', {class: 'muted'}, 'every device');
}

/** What the deployment runs, in a few words. */
function runs(spec) {
  const parts = [
    ...(spec.charts ?? []).map((chart) => `chart ${chart}`),
    ...Object.keys(spec.processes ?? {}).map((process) => `process ${process}`),
    ...Object.keys(spec.configFiles ?? {}).map((file) => `file ${file}`),
    spec.agentRelease ? `agent ${spec.agentRelease}` : null,
  ].filter(Boolean);
  return parts.length ? parts.join(', ') : '—';
}

function phaseBadge(phase) {
  return h('span', {class: `badge phase-${phase}`}, phase);
}

/** One deployment: its spec in short and the rollout of its revision. */
async function renderOne(main, me, name) {
  const heading = () => [
    h('p', {class: 'breadcrumb'}, h('a', {href: '#/deployments'}, 'Deployments')),
    h('h1', {}, name)];
  show(main, ...heading(), h('p', {class: 'loading'}, 'Loading…'));
  const load = async () => {
    const [deployment, rollout] = await Promise.all([
      call(`/deployments/${encodeURIComponent(name)}`),
      call(`/deployments/${encodeURIComponent(name)}/status`),
    ]);
    const rolloutPolicy = deployment.spec.rollout ?? {};
    show(main, ...heading(),
      facts([
        ['Target', target(deployment.spec.target)],
        ['Runs', runs(deployment.spec)],
        ['Pinned to node', deployment.spec.hostname],
        ['Revision', String(deployment.revision)],
        ['Batches', rolloutPolicy.batchSize
          ? `${rolloutPolicy.batchSize} devices`
          : rolloutPolicy.batchPercent && `${rolloutPolicy.batchPercent} % of the targeted devices`],
        ['Pauses when failed', rolloutPolicy.maxFailurePercent !== undefined
          ? `over ${rolloutPolicy.maxFailurePercent} % of a batch` : null],
        ['Updated', timeElement(deployment.updatedAt)],
      ]),
      rolloutSection(rollout, atLeast(me.role, 'operator') ? () => resume(name, load) : null));
    return rollout.phase;
  };
  let phase;
  try {
    phase = await load();
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, ...heading(), errorBox(error));
    return;
  }
  // Read again while it moves; stops once it settles or the page is left.
  const timer = setInterval(async () => {
    if (!main.isConnected || (phase !== 'progressing' && phase !== 'deleting')) {
      clearInterval(timer);
      return;
    }
    try {
      phase = await load();
    } catch (error) {
      clearInterval(timer);
      if (error.name === 'ApiError') main.append(errorBox(error));
    }
  }, PROGRESS_MS);
}

async function resume(name, reload) {
  await call(`/deployments/${encodeURIComponent(name)}/resume`, {method: 'POST'});
  await reload();
}

/** The rollout: a bar of ready, failed and waiting devices, then each device. */
function rolloutSection(rollout, onResume) {
  const waiting = Math.max(rollout.targeted - rollout.ready - rollout.failed, 0);
  return h('section', {'aria-labelledby': 'rollout-title'},
    h('h2', {id: 'rollout-title'}, `Rollout of revision ${rollout.revision} `, phaseBadge(rollout.phase)),
    rollout.reason ? h('p', {class: 'notice'}, rollout.reason) : null,
    stackedBar([[rollout.ready, 'ready'], [rollout.failed, 'failed'], [waiting, 'waiting']], rollout.targeted,
      {className: 'progress', label: `${rollout.ready} ready, ${rollout.failed} failed, ${waiting} waiting`}),
    h('p', {class: 'rollout-counts'},
      `${rollout.ready} of ${rollout.targeted} ready, ${rollout.updated} updated, ${rollout.failed} failed, ${rollout.rolledBack} rolled back`),
    rollout.phase === 'paused' && onResume
      ? h('button', {type: 'button', class: 'resume', onclick: onResume}, 'Resume the rollout')
      : null,
    rollout.held?.length
      ? h('p', {class: 'notice'}, `Waiting for update locks on ${rollout.held.map((held) => held.device).join(', ')}`)
      : null,
    rollout.devices.length === 0
      ? h('p', {class: 'empty'}, 'No device is targeted.')
      : h('table', {class: 'rollout'},
        h('thead', {}, h('tr', {},
          ['Device', 'Batch', 'Revision', 'State', 'Reason', 'Updated'].map((title) => h('th', {scope: 'col'}, title)))),
        h('tbody', {}, rollout.devices.map((device) => h('tr', {'data-device': device.device},
          h('th', {scope: 'row'}, h('a', {href: `#/devices/${encodeURIComponent(device.device)}`}, device.device)),
          h('td', {}, device.batch ?? '—'),
          h('td', {}, device.revision ?? '—'),
          h('td', {class: 'state'}, device.state
            ? h('span', {class: `badge state-${device.state}`}, device.rolledBack ? `${device.state}, rolled back` : device.state)
            : h('span', {class: 'muted'}, 'waiting')),
          h('td', {}, device.reason ?? ''),
          h('td', {}, timeElement(device.updatedAt)))))));
}
