// The login page: posts to /api/v1/login and keeps the token for this tab.

import {login} from './api.js';
import {h} from './dom.js';

/**
 * The page; `notice` says why it is shown (session expired, logged out),
 * `onLoggedIn` runs after a successful login.
 */
export function render({notice, onLoggedIn}) {
  const error = h('p', {class: 'error', role: 'alert', id: 'login-error', hidden: true});
  const username = h('input', {id: 'username', name: 'username', autocomplete: 'username', required: true, autofocus: true});
  const password = h('input', {id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true});
  const submit = h('button', {type: 'submit'}, 'Log in');
  const form = h('form', {class: 'login', 'aria-describedby': 'login-error', onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await login(username.value, password.value);
      onLoggedIn();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
    }
  }},
    h('h1', {}, 'tether'),
    notice ? h('p', {class: 'notice', role: 'status'}, notice) : null,
    h('label', {for: 'username'}, 'Username'), username,
    h('label', {for: 'password'}, 'Password'), password,
    error,
    submit);
  return h('main', {class: 'login-page', id: 'main'}, form);
}
