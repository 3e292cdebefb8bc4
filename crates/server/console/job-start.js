// Starting a fleet-wide job: the action's form generated from the
// catalogue (action.js, as on a device's page), the label selector of the
// devices it runs on, and the limits `POST /jobs` takes. tetherd checks it
// all; its refusal is shown beside the field it names.

import {atLeast, call} from './api.js';
import {forbidden, h, loadFailure, show} from './dom.js';
import {actionChooser, actionForm} from './action.js';

export async function render(main, {me, params, navigate}) {
  const crumb = h('p', {class: 'breadcrumb'}, h('a', {href: '#/jobs'}, 'Jobs'));
  // POST /jobs is an operator's (docs/roles.md): a viewer is told so
  // rather than shown a form tetherd would refuse.
  if (!atLeast(me.role, 'operator')) {
    show(main, crumb, h('h1', {}, 'Start a job'), forbidden(me.role, 'start jobs'));
    return;
  }
  show(main, crumb, h('h1', {}, 'Start a job'), h('p', {class: 'loading'}, 'Loading…'));
  let catalogue;
  try {
    catalogue = await call('/catalogue');
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    show(main, crumb, h('h1', {}, 'Start a job'), loadFailure(error, me.role, 'read the catalogue'));
    return;
  }
  // Made once and moved into each action's form, so what was typed
  // stays when another action is chosen.
  const selector = h('input', {id: 'job-selector', name: 'labelSelector', required: true, 'aria-required': 'true',
    value: params.get('selector') ?? '', placeholder: 'site=berlin,role!=gateway', autocomplete: 'off', spellcheck: 'false',
    'aria-describedby': 'job-selector-help'});
  const number = (id, name) => h('input', {id, name, type: 'number', inputmode: 'numeric', step: '1', min: '1'});
  const concurrency = number('job-concurrency', 'concurrency');
  const rate = number('job-rate', 'ratePerSecond');
  const ttl = number('job-ttl', 'ttlSeconds');
  const extra = [
    h('div', {class: 'field'},
      h('label', {for: 'job-selector'}, 'Devices: label selector', h('span', {class: 'required', title: 'required'}, ' (required)')),
      selector,
      h('p', {class: 'muted hint', id: 'job-selector-help'},
        'Every device it matches now gets the action: key=value, key!=value, key in (a,b), key; commas join them.')),
    h('fieldset', {class: 'limits'},
      h('legend', {}, 'Limits (optional)'),
      h('div', {class: 'field'}, h('label', {for: 'job-concurrency'}, 'At most this many devices at once'), concurrency),
      h('div', {class: 'field'}, h('label', {for: 'job-rate'}, 'At most this many started a second'), rate),
      h('div', {class: 'field'}, h('label', {for: 'job-ttl'}, 'Seconds an offline device may take to come back (default 3600)'), ttl)),
  ];
  const optional = (input) => (input.value.trim() === '' ? undefined : Number(input.value));
  show(main, crumb, h('h1', {}, 'Start a job'),
    h('p', {class: 'muted'}, 'One action on every device a label selector matches, released within the limits you set.'),
    actionChooser(catalogue, (entry) => actionForm(entry, {
      submitLabel: `Start ${entry.name}`,
      extra,
      send: async (input) => {
        const job = await call('/jobs', {method: 'POST', body: {
          labelSelector: selector.value.trim(), action: entry.name, input,
          concurrency: optional(concurrency), ratePerSecond: optional(rate), ttlSeconds: optional(ttl)}});
        navigate(`/jobs/${encodeURIComponent(job.id)}`);
      },
    })));
}
