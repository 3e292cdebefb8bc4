// Who may do what (admins only, docs/roles.md): users and their roles,
// service accounts and their API keys. A generated password or a new key
// is shown once, as the API answers it once; tetherd keeps only hashes.

import {call} from './api.js';
import {attempt, errorBox, h, show} from './dom.js';
import {timeElement} from './time.js';

const ROLES = ['viewer', 'operator', 'admin'];

export async function render(main, {me}) {
  show(main, h('h1', {}, 'Access'), h('p', {class: 'loading'}, 'Loading…'));
  const reload = () => render(main, {me});
  const [users, accounts] = await Promise.all([
    call('/users').catch((error) => error),
    call('/service-accounts').catch((error) => error),
  ]);
  for (const answer of [users, accounts]) {
    if (answer instanceof Error && answer.name !== 'ApiError') throw answer;
  }
  const keys = accounts instanceof Error ? [] : await Promise.all(accounts.map((account) =>
    call(`/service-accounts/${encodeURIComponent(account.name)}/keys`).catch((error) => error)));
  show(main, h('h1', {}, 'Access'),
    users instanceof Error ? errorBox(users) : usersSection(users, me, reload),
    accounts instanceof Error ? errorBox(accounts) : accountsSection(accounts, keys, reload));
}

/** A form's failure shown beside it, in the API's words. */
function failureLine(id) {
  return h('p', {class: 'error', role: 'alert', id, hidden: true});
}

function roleSelect(id, selected) {
  return h('select', {id, name: 'role'}, ROLES.map((role) => h('option', {value: role, selected: role === selected}, role)));
}

/** A secret shown once, with what to do with it. */
function shownOnce(what, secret, advice) {
  return h('div', {class: 'notice secret', role: 'status'},
    h('p', {}, `${what} — shown this once; tetherd keeps only a hash. ${advice}`),
    h('pre', {}, h('code', {class: 'secret-value'}, secret)));
}

function usersSection(users, me, reload) {
  const failure = failureLine('user-error');
  const created = h('div', {});
  const username = h('input', {id: 'new-username', name: 'username', autocomplete: 'off', required: true, spellcheck: 'false'});
  const password = h('input', {id: 'new-password', name: 'password', type: 'password', autocomplete: 'new-password'});
  const role = roleSelect('new-role', 'viewer');
  const form = h('form', {class: 'inline-form', onsubmit: async (event) => {
    event.preventDefault();
    const body = {username: username.value.trim(), role: role.value};
    if (password.value) body.password = password.value;
    const done = await attempt(failure, () => call('/users', {method: 'POST', body}));
    if (!done) return;
    const answer = done.value;
    await reload();
    if (answer.password) {
      document.getElementById('user-created')?.replaceChildren(
        shownOnce(`The password of ${answer.username}`, answer.password, 'Give it to them to log in, then they can change it.'));
    }
  }},
    h('label', {for: 'new-username'}, 'Username'), username,
    h('label', {for: 'new-role'}, 'Role'), role,
    h('label', {for: 'new-password'}, 'Password (empty: tetherd makes one)'), password,
    h('button', {type: 'submit'}, 'Add user'));
  created.id = 'user-created';
  return h('section', {'aria-labelledby': 'users-title'},
    h('h2', {id: 'users-title'}, 'Users'),
    h('table', {class: 'users'},
      h('thead', {}, h('tr', {}, ['User', 'Role', ''].map((title) => h('th', {scope: 'col'}, title)))),
      h('tbody', {}, users.map((user) => {
        const select = roleSelect(`role-${user.username}`, user.role);
        select.setAttribute('aria-label', `Role of ${user.username}`);
        select.addEventListener('change', async () => {
          const done = await attempt(failure, () =>
            call(`/users/${encodeURIComponent(user.username)}/role`, {method: 'PUT', body: {role: select.value}}));
          if (done) await reload();
          else select.value = user.role;
        });
        return h('tr', {'data-user': user.username},
          h('th', {scope: 'row'}, user.username, user.username === me.username ? h('span', {class: 'muted'}, ' (you)') : null),
          h('td', {}, select),
          h('td', {}, h('button', {type: 'button', class: 'secondary', 'aria-label': `Delete ${user.username}`, onclick: async () => {
            if (!confirm(`Delete the user ${user.username}? Their sessions end at once.`)) return;
            const done = await attempt(failure, () => call(`/users/${encodeURIComponent(user.username)}`, {method: 'DELETE'}));
            if (done) await reload();
          }}, 'Delete')));
      }))),
    failure, form, created);
}

function accountsSection(accounts, keysByAccount, reload) {
  const failure = failureLine('account-error');
  const name = h('input', {id: 'new-account', name: 'name', autocomplete: 'off', required: true, spellcheck: 'false'});
  const role = roleSelect('new-account-role', 'viewer');
  const created = h('div', {id: 'key-created'});
  const form = h('form', {class: 'inline-form', onsubmit: async (event) => {
    event.preventDefault();
    const done = await attempt(failure, () =>
      call('/service-accounts', {method: 'POST', body: {name: name.value.trim(), role: role.value}}));
    if (done) await reload();
  }},
    h('label', {for: 'new-account'}, 'Name'), name,
    h('label', {for: 'new-account-role'}, 'Role'), role,
    h('button', {type: 'submit'}, 'Add service account'));
  const newKey = async (account) => {
    const done = await attempt(failure, () =>
      call(`/service-accounts/${encodeURIComponent(account)}/keys`, {method: 'POST', body: {}}));
    if (!done) return;
    await reload();
    document.getElementById('key-created')?.replaceChildren(
      shownOnce(`A new API key of ${account}`, done.value.key, 'Send it as Authorization: Bearer <key>.'));
  };
  const revoke = async (account, id) => {
    const done = await attempt(failure, () =>
      call(`/service-accounts/${encodeURIComponent(account)}/keys/${encodeURIComponent(id)}/revoke`, {method: 'POST'}));
    if (done) await reload();
  };
  return h('section', {'aria-labelledby': 'accounts-title'},
    h('h2', {id: 'accounts-title'}, 'Service accounts and API keys'),
    accounts.length === 0
      ? h('p', {class: 'empty'}, 'No service account yet: scripts and CI log in with one’s API key.')
      : accounts.map((account, index) => {
        const keys = keysByAccount[index];
        return h('div', {class: 'account', 'data-account': account.name},
          h('h3', {}, account.name, ' ', h('span', {class: 'role'}, account.role)),
          keys instanceof Error ? errorBox(keys) : keysTable(account.name, keys, revoke),
          h('button', {type: 'button', onclick: () => newKey(account.name)}, 'New API key'));
      }),
    failure, created, form);
}

function keysTable(account, keys, revoke) {
  if (keys.length === 0) return h('p', {class: 'empty'}, 'No API key.');
  return h('table', {class: 'keys'},
    h('thead', {}, h('tr', {}, ['Key', 'Created', 'Expires', 'Last used', ''].map((title) => h('th', {scope: 'col'}, title)))),
    h('tbody', {}, keys.map((key) => h('tr', {'data-key': key.id},
      h('th', {scope: 'row'}, h('code', {}, key.id)),
      h('td', {}, timeElement(key.createdAt)),
      h('td', {}, key.expiresAt ? timeElement(key.expiresAt) : 'never'),
      h('td', {}, key.lastUsedAt ? timeElement(key.lastUsedAt) : 'never'),
      h('td', {}, key.revokedAt
        ? h('span', {class: 'muted'}, 'revoked ', timeElement(key.revokedAt))
        : h('button', {type: 'button', class: 'secondary', 'aria-label': `Revoke ${key.id}`,
          onclick: () => revoke(account, key.id)}, 'Revoke'))))));
}
