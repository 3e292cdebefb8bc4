// The device list: filtered by a label selector, in pages of the API's
// `continue` tokens. The API has no search by name yet, so the filter is
// the label selector alone.

import {call, query} from './api.js';
import {errorBox, h, presence, show} from './dom.js';
import {timeElement} from './time.js';

const PAGE_SIZE = 50;

export async function render(main, {params, navigate}) {
  const selector = params.get('selector') ?? '';
  const token = params.get('continue') ?? '';
  const pageNumber = Number(params.get('page') ?? '1') || 1;
  const input = h('input', {id: 'selector', name: 'selector', value: selector, placeholder: 'site=berlin,role!=gateway',
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'selector-help'});
  const form = h('form', {class: 'filter', role: 'search', onsubmit: (event) => {
    event.preventDefault();
    navigate(`/devices${query({selector: input.value.trim()})}`);
  }},
    h('label', {for: 'selector'}, 'Label selector'),
    h('div', {class: 'row'}, input, h('button', {type: 'submit'}, 'Filter'),
      selector ? h('a', {href: '#/devices', class: 'button secondary'}, 'Clear') : null),
    h('p', {id: 'selector-help', class: 'muted'},
      'key=value, key!=value, key in (a,b), key notin (a,b), key, !key; commas join them.'));
  const results = h('div', {class: 'results'}, h('p', {class: 'loading'}, 'Loading…'));
  show(main, h('h1', {}, 'Devices'), form, results);

  let page;
  try {
    page = await call(`/devices${query({labelSelector: selector, limit: PAGE_SIZE, continue: token})}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(results, errorBox(error));
    input.setAttribute('aria-invalid', 'true');
    return;
  }
  if (page.items.length === 0) {
    show(results, h('p', {class: 'empty'}, selector ? `No device matches ${selector}.` : 'No device yet. Add one with tether devices create NAME.'));
    return;
  }
  const addToSelector = (key, value) => {
    const term = `${key}=${value}`;
    const terms = selector ? selector.split(',').map((part) => part.trim()) : [];
    if (!terms.includes(term)) terms.push(term);
    return `#/devices${query({selector: terms.join(',')})}`;
  };
  show(results,
    h('table', {class: 'devices'},
      h('caption', {class: 'muted'}, `Page ${pageNumber}, ${page.items.length} devices${selector ? ` matching ${selector}` : ''}, by name`),
      h('thead', {}, h('tr', {},
        ['Name', 'Presence', 'Labels', 'Last seen', 'Agent'].map((title) => h('th', {scope: 'col'}, title)))),
      h('tbody', {}, page.items.map((device) => h('tr', {},
        h('th', {scope: 'row'}, h('a', {href: `#/devices/${encodeURIComponent(device.name)}`}, device.name),
          device.displayName ? h('div', {class: 'muted'}, device.displayName) : null),
        h('td', {}, presence(device.presence)),
        h('td', {}, h('ul', {class: 'labels'}, Object.entries(device.labels).map(([key, value]) =>
          h('li', {}, h('a', {class: 'label', href: addToSelector(key, value), title: `Filter by ${key}=${value}`}, `${key}=${value}`))))),
        h('td', {}, timeElement(device.lastSeen)),
        h('td', {}, device.agentVersion ?? '—'))))),
    h('nav', {class: 'pager', 'aria-label': 'Pages'},
      pageNumber > 1 ? h('a', {href: `#/devices${query({selector})}`}, 'First page') : null,
      page.continue
        ? h('a', {rel: 'next', href: `#/devices${query({selector, continue: page.continue, page: pageNumber + 1})}`}, 'Next page')
        : h('span', {class: 'muted'}, 'Last page')));
}
