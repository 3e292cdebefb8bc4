// Provisioning policies (ADR 0025): how devices not yet known register,
// what each policy sets on the devices it creates, and its provisioning
// keys. Anyone may read them; admins make and revoke keys. A new key's
// file is shown once: tetherd keeps only a hash of its secret.

import {atLeast, call} from './api.js';
import {attempt, errorBox, facts, h, show} from './dom.js';
import {timeElement} from './time.js';

export async function render(main, {me}) {
  show(main, h('h1', {}, 'Provisioning'), h('p', {class: 'loading'}, 'Loading…'));
  let policies;
  try {
    policies = await call('/provisioning-policies?limit=100');
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, h('h1', {}, 'Provisioning'), errorBox(error));
    return;
  }
  if (policies.items.length === 0) {
    show(main, h('h1', {}, 'Provisioning'),
      h('p', {class: 'empty'}, 'No provisioning policy yet. Make one with tether provisioning create.'));
    return;
  }
  // Keys are the operators' to see (docs/roles.md); a viewer is not shown them.
  const mayReadKeys = atLeast(me.role, 'operator');
  const keys = await Promise.all(policies.items.map((policy) => (mayReadKeys
    ? call(`/provisioning-policies/${encodeURIComponent(policy.name)}/keys`).catch((error) => error)
    : null)));
  const mayChange = atLeast(me.role, 'admin');
  const reload = () => render(main, {me});
  show(main, h('h1', {}, 'Provisioning'),
    h('p', {}, policies.items.some((policy) => policy.pendingApprovals > 0)
      ? h('a', {href: '#/approvals'}, 'Registrations are waiting for approval.')
      : null),
    h('div', {id: 'provisioning-key-created'}),
    policies.items.map((policy, index) => policySection(policy, keys[index], mayChange, reload)));
}

function policySection(policy, keys, mayChange, reload) {
  const failure = h('p', {class: 'error', role: 'alert', hidden: true});
  const labels = Object.entries(policy.spec.template.metadata.labels ?? {});
  const makeKey = async () => {
    const made = await attempt(failure, () =>
      call(`/provisioning-policies/${encodeURIComponent(policy.name)}/keys`, {method: 'POST', body: {}}));
    if (!made) return;
    const key = made.value;
    await reload();
    document.getElementById('provisioning-key-created')?.replaceChildren(
      h('div', {class: 'notice secret', role: 'status'},
        h('p', {}, `A new provisioning key for ${policy.name} — shown this once; tetherd keeps only a hash. `,
          'Save it as a file and give it to the devices’ first boot (docs/operations/provisioning.md).'),
        h('pre', {}, h('code', {class: 'secret-value'}, JSON.stringify(key, null, 2)))));
  };
  const revoke = async (id) => {
    const revoked = await attempt(failure, () =>
      call(`/provisioning-policies/${encodeURIComponent(policy.name)}/keys/${encodeURIComponent(id)}`, {method: 'DELETE'}));
    if (revoked) await reload();
  };
  return h('section', {class: 'policy', 'data-policy': policy.name, 'aria-labelledby': `policy-${policy.name}`},
    h('h2', {id: `policy-${policy.name}`}, policy.name, ' ', h('span', {class: 'badge'}, policy.spec.mode.toLowerCase())),
    facts([
      ['Devices created', String(policy.devices)],
      ['Waiting for approval', policy.pendingApprovals ? h('a', {href: '#/approvals'}, String(policy.pendingApprovals)) : '0'],
      ['Labels it sets', labels.length ? labels.map(([key, value]) => `${key}=${value}`).join(', ') : null],
      ['Same hardware by', policy.spec.identityFieldPaths.length ? policy.spec.identityFieldPaths.join(', ') : 'none: each registration is a new device'],
      ['At most', policy.spec.maxDevices ? `${policy.spec.maxDevices} devices` : null],
      ['Created', timeElement(policy.createdAt)],
    ]),
    keys === null ? null : h('h3', {}, 'Provisioning keys'),
    keys === null ? null : keys instanceof Error ? errorBox(keys) : keysTable(keys, mayChange ? revoke : null),
    mayChange ? h('button', {type: 'button', onclick: makeKey}, 'New provisioning key') : null,
    failure);
}

function keysTable(keys, revoke) {
  if (keys.length === 0) return h('p', {class: 'empty'}, 'No key: no device can register with this policy.');
  return h('table', {class: 'keys'},
    h('thead', {}, h('tr', {}, ['Key', 'Made by', 'Created', 'Expires', 'Last used', ''].map((title) => h('th', {scope: 'col'}, title)))),
    h('tbody', {}, keys.map((key) => h('tr', {'data-key': key.keyId},
      h('th', {scope: 'row'}, h('code', {}, key.keyId)),
      h('td', {}, key.createdBy),
      h('td', {}, timeElement(key.createdAt)),
      h('td', {}, key.expiresAt ? timeElement(key.expiresAt) : 'never'),
      h('td', {}, key.lastUsedAt ? timeElement(key.lastUsedAt) : 'never'),
      h('td', {}, key.revokedAt
        ? h('span', {class: 'muted'}, 'revoked ', timeElement(key.revokedAt))
        : revoke ? h('button', {type: 'button', class: 'secondary', 'aria-label': `Revoke ${key.keyId}`, onclick: () => revoke(key.keyId)}, 'Revoke') : null)))));
}
