// The console's shell: routing in the URL's fragment (#/devices?…), the
// header and navigation, and the states every page shares (logged out,
// session expired, tetherd unreachable).

import {SessionExpired, Unreachable, atLeast, call, logout, token, whenSessionExpires} from './api.js';
import {h, show} from './dom.js';
import {refreshRelativeTimes} from './time.js';
import * as live from './live.js';
import * as loginPage from './login.js';
import * as overviewPage from './overview.js';
import * as devicesPage from './devices.js';
import * as devicePage from './device.js';
import * as deploymentsPage from './deployments.js';
import * as provisioningPage from './provisioning.js';
import * as accessPage from './access.js';
import * as jobsPage from './jobs.js';
import * as jobPage from './job.js';
import * as jobStartPage from './job-start.js';
import * as approvalsPage from './approvals.js';
import * as alertsPage from './alerts.js';
import * as deliveriesPage from './deliveries.js';
import * as auditPage from './audit.js';

const root = document.getElementById('app');

/** The navigation: fragment path, label, page, and the least role it is for. */
const SECTIONS = [
  ['/', 'Overview', overviewPage],
  ['/devices', 'Devices', devicesPage],
  ['/jobs', 'Jobs', jobsPage],
  ['/deployments', 'Deployments', deploymentsPage],
  ['/alerts', 'Alerts', alertsPage],
  ['/approvals', 'Approvals', approvalsPage],
  ['/provisioning', 'Provisioning', provisioningPage],
  ['/audit', 'Audit log', auditPage],
  ['/access', 'Access', accessPage, 'admin'],
];

/** Who is logged in (`GET /users/me`), fetched once per token. */
let me = null;
/** Why the login page is shown, if not simply logged out. */
let loginNotice = null;

/**
 * A name from the fragment, decoded; null for one that is not a name: `.`
 * and `..` (which the browser would resolve in the API path the page
 * calls, reaching another route) or a broken `%` escape.
 */
function segment(raw) {
  let name;
  try {
    name = decodeURIComponent(raw);
  } catch {
    return null;
  }
  return name === '.' || name === '..' ? null : name;
}

/** The route of a page about one named thing, or none for a name that is not one. */
function named(path, pattern, page, key) {
  const match = path.match(pattern);
  if (!match) return undefined;
  const name = segment(match[1]);
  return name === null ? {page: null} : {page, [key]: name};
}

/** The fragment as a path, its parameters, and the route's page. */
function route() {
  const fragment = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = fragment.split('?');
  const params = new URLSearchParams(search);
  if (path === '/login') return {path, params, page: loginPage};
  if (path === '/jobs/new') return {path, params, page: jobStartPage};
  const one = named(path, /^\/devices\/([^/]+)$/, devicePage, 'name')
    ?? named(path, /^\/deployments\/([^/]+)$/, deploymentsPage, 'name')
    ?? named(path, /^\/jobs\/([^/]+)$/, jobPage, 'id');
  if (one) return {path, params, ...one};
  if (path === '/alerts/deliveries') return {path, params, page: deliveriesPage};
  const section = SECTIONS.find(([sectionPath]) => sectionPath === path);
  return {path, params, page: section ? section[2] : null};
}

/** Goes to a fragment path; the hashchange handler renders it. */
function navigate(fragment) {
  if (location.hash === `#${fragment}`) render();
  else location.hash = fragment;
}

whenSessionExpires(() => {
  me = null;
  live.stop();
  loginNotice = 'Your session expired. Log in again.';
  const here = location.hash.replace(/^#/, '');
  navigate(`/login${here && !here.startsWith('/login') ? `?next=${encodeURIComponent(here)}` : ''}`);
});

async function render() {
  const current = route();
  live.forgetListeners();
  if (current.page === loginPage || !token()) {
    me = null;
    live.stop();
    const next = current.page === loginPage ? current.params.get('next') : location.hash.replace(/^#/, '');
    const notice = loginNotice;
    loginNotice = null;
    show(root, loginPage.render({notice, onLoggedIn: () => navigate(next || '/')}));
    return;
  }
  try {
    me ??= await call('/users/me');
  } catch (error) {
    if (error instanceof SessionExpired) return;
    showUnreachable(error);
    return;
  }
  live.start();
  const main = h('main', {id: 'main', tabindex: '-1'});
  show(root, shell(current.path), main);
  if (!current.page) {
    show(main, h('h1', {}, 'Not found'), h('p', {}, 'No page here. ', h('a', {href: '#/'}, 'Go to the overview.')));
    return;
  }
  try {
    await current.page.render(main, {me, params: current.params, name: current.name, id: current.id, navigate});
  } catch (error) {
    if (error instanceof SessionExpired) return;
    if (error instanceof Unreachable) showUnreachable(error);
    else throw error;
  }
}

/** The header: the product, the sections, who is logged in and a way out. */
function shell(path) {
  const inSection = (sectionPath) => (sectionPath === '/' ? path === '/' : path.startsWith(sectionPath));
  return h('header', {class: 'shell'},
    h('a', {class: 'skip', href: '#main', onclick: skipToMain}, 'Skip to content'),
    h('a', {class: 'brand', href: '#/'}, 'tether'),
    h('nav', {'aria-label': 'Main'},
      h('ul', {}, SECTIONS.filter(([, , , least]) => !least || atLeast(me.role, least)).map(([sectionPath, label]) =>
        h('li', {}, h('a', {href: `#${sectionPath}`, 'aria-current': inSection(sectionPath) ? 'page' : false}, label))))),
    h('div', {class: 'who'},
      live.statusIndicator(),
      h('span', {class: 'user'}, me.username),
      h('span', {class: 'role', title: 'Your role decides what you may do here'}, me.role),
      h('button', {type: 'button', onclick: signOut}, 'Log out')));
}

function skipToMain(event) {
  event.preventDefault();
  document.getElementById('main')?.focus();
}

async function signOut() {
  try {
    await logout();
  } catch {
    // The token is forgotten either way; tetherd ends it when it expires.
  }
  me = null;
  live.stop();
  loginNotice = 'You logged out.';
  navigate('/login');
}

/** tetherd did not answer: say so, and offer to try again. */
function showUnreachable(error) {
  show(root, h('main', {class: 'unreachable', id: 'main'},
    h('h1', {}, 'tetherd cannot be reached'),
    h('p', {role: 'alert'}, error.message),
    h('button', {type: 'button', onclick: () => render()}, 'Try again')));
}

window.addEventListener('hashchange', () => render());
setInterval(() => refreshRelativeTimes(), 30_000);
render();
