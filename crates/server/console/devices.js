// The device list: filtered by a label selector and a search of names,
// sorted by name or time last seen, in pages of the API's `continue`
// tokens. Typing in the search box or sorting reloads the table in place
// (the fragment follows, without a new history entry), so focus stays
// where the keyboard left it.

import {call, query} from './api.js';
import {errorBox, h, presence, show} from './dom.js';
import {timeElement} from './time.js';
import {listen} from './live.js';

const PAGE_SIZE = 50;
/** Quiet time after the last keystroke before the search runs. */
const SEARCH_DELAY_MS = 300;

/** The sortable columns: the API's sort key, and its first direction. */
const SORTABLE = {
  name: {title: 'Name', first: 'name'},
  lastSeen: {title: 'Last seen', first: '-lastSeen'},
};

/** The caption's words for each order. */
const ORDER_WORDS = {
  'name': 'by name',
  '-name': 'by name, Z to A',
  'lastSeen': 'least recently seen first',
  '-lastSeen': 'most recently seen first',
};

export async function render(main, {params, navigate}) {
  const state = {
    selector: params.get('selector') ?? '',
    search: params.get('search') ?? '',
    sort: ORDER_WORDS[params.get('sort')] ? params.get('sort') : 'name',
    token: params.get('continue') ?? '',
    pageNumber: Number(params.get('page') ?? '1') || 1,
  };
  const input = h('input', {id: 'selector', name: 'selector', value: state.selector, placeholder: 'site=berlin,role!=gateway',
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'selector-help'});
  const search = h('input', {id: 'search', name: 'search', type: 'search', value: state.search,
    placeholder: 'Name or display name', autocomplete: 'off', spellcheck: 'false', 'aria-controls': 'device-results'});
  const form = h('form', {class: 'filter', role: 'search', onsubmit: (event) => {
    event.preventDefault();
    navigate(`/devices${listingQuery({...state, selector: input.value.trim(), search: search.value.trim()})}`);
  }},
    h('label', {for: 'search'}, 'Search'),
    h('div', {class: 'row'}, search),
    h('label', {for: 'selector'}, 'Label selector'),
    h('div', {class: 'row'}, input, h('button', {type: 'submit'}, 'Filter'),
      state.selector || state.search ? h('a', {href: '#/devices', class: 'button secondary'}, 'Clear') : null),
    h('p', {id: 'selector-help', class: 'muted'},
      'key=value, key!=value, key in (a,b), key notin (a,b), key, !key; commas join them.'));
  const results = h('div', {class: 'results', id: 'device-results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main, h('h1', {}, 'Devices'), form, results);

  // Only the newest load may show its answer (an older one can arrive last).
  let generation = 0;
  const reload = async (focusSort) => {
    state.token = '';
    state.pageNumber = 1;
    history.replaceState(null, '', `#/devices${listingQuery(state)}`);
    await load(++generation, focusSort);
  };
  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.search = search.value.trim();
      reload();
    }, SEARCH_DELAY_MS);
  });
  const sortBy = (key) => {
    const column = SORTABLE[key];
    const current = state.sort.replace(/^-/, '');
    state.sort = current === key ? (state.sort.startsWith('-') ? key : `-${key}`) : column.first;
    reload(key);
  };

  const load = async (mine, focusSort) => {
    let page;
    try {
      page = await call(`/devices${query({labelSelector: state.selector, search: state.search, sort: sortParameter(state.sort),
        limit: PAGE_SIZE, continue: state.token})}`);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      if (mine !== generation) return;
      show(results, errorBox(error));
      input.setAttribute('aria-invalid', 'true');
      return;
    }
    if (mine !== generation) return;
    showPage(results, page, state, sortBy);
    if (focusSort) results.querySelector(`button[data-sort="${focusSort}"]`)?.focus();
  };
  await load(++generation);
  // A listed device's presence changes in place; the order stays as read,
  // so rows do not move under the reader.
  listen(({event, resync}) => {
    if (resync) {
      // Unreachable again: the next reconnect reads it again.
      load(++generation).catch(() => {});
      return;
    }
    if (event?.event !== 'device-online' && event?.event !== 'device-offline') return;
    const row = [...results.querySelectorAll('tr[data-device]')].find((tr) => tr.dataset.device === event.device);
    if (!row) return;
    row.querySelector('td.presence')?.replaceChildren(presence(event.event === 'device-online' ? 'online' : 'offline'));
    row.querySelector('td.last-seen')?.replaceChildren(timeElement(event.receivedAt));
  });
}

/** The fragment's query for a listing, leaving out the defaults. */
function listingQuery({selector, search, sort, token, pageNumber}) {
  return query({selector, search, sort: sortParameter(sort), continue: token, page: token ? pageNumber : ''});
}

function sortParameter(sort) {
  return sort === 'name' ? '' : sort;
}

function showPage(results, page, state, sortBy) {
  const {selector, search, sort, pageNumber} = state;
  const matching = [selector ? `matching ${selector}` : null, search ? `containing “${search}”` : null].filter(Boolean).join(', ');
  if (page.items.length === 0) {
    show(results, h('p', {class: 'empty'}, matching
      ? `No device ${matching}.`
      : 'No device yet. Add one with tether devices create NAME.'));
    return;
  }
  const addToSelector = (key, value) => {
    const term = `${key}=${value}`;
    const terms = selector ? selector.split(',').map((part) => part.trim()) : [];
    if (!terms.includes(term)) terms.push(term);
    return `#/devices${listingQuery({...state, selector: terms.join(','), token: ''})}`;
  };
  const header = (title, key) => {
    if (!key) return h('th', {scope: 'col'}, title);
    const active = sort.replace(/^-/, '') === key;
    const descending = sort.startsWith('-');
    return h('th', {scope: 'col', 'aria-sort': active ? (descending ? 'descending' : 'ascending') : false},
      h('button', {type: 'button', class: 'sort', 'data-sort': key, onclick: () => sortBy(key),
        title: `Sort by ${title.toLowerCase()}`},
        title, h('span', {class: 'arrow', 'aria-hidden': 'true'}, active ? (descending ? ' ↓' : ' ↑') : ' ↕')));
  };
  show(results,
    h('table', {class: 'devices'},
      h('caption', {class: 'muted'}, `Page ${pageNumber}, ${page.items.length} devices${matching ? ` ${matching}` : ''}, ${ORDER_WORDS[sort]}`),
      h('thead', {}, h('tr', {},
        header('Name', 'name'), header('Presence'), header('Labels'), header('Last seen', 'lastSeen'), header('Agent'))),
      h('tbody', {}, page.items.map((device) => h('tr', {'data-device': device.name},
        h('th', {scope: 'row'}, h('a', {href: `#/devices/${encodeURIComponent(device.name)}`}, device.name),
          device.displayName ? h('div', {class: 'muted'}, device.displayName) : null),
        h('td', {class: 'presence'}, presence(device.presence)),
        h('td', {}, h('ul', {class: 'labels'}, Object.entries(device.labels).map(([key, value]) =>
          h('li', {}, h('a', {class: 'label', href: addToSelector(key, value), title: `Filter by ${key}=${value}`}, `${key}=${value}`))))),
        h('td', {class: 'last-seen'}, timeElement(device.lastSeen)),
        h('td', {}, device.agentVersion ?? '—'))))),
    h('nav', {class: 'pager', 'aria-label': 'Pages'},
      pageNumber > 1 ? h('a', {href: `#/devices${listingQuery({...state, token: ''})}`}, 'First page') : null,
      page.continue
        ? h('a', {rel: 'next', href: `#/devices${listingQuery({...state, token: page.continue, pageNumber: pageNumber + 1})}`}, 'Next page')
        : h('span', {class: 'muted'}, 'Last page')));
}
