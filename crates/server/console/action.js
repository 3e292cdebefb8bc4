// Running an action: a form generated from the catalogue's input schema of
// the action (`GET /catalogue`), which tetherd validates; the form does not
// second-guess it (`novalidate`), so what the operator sees refused is
// tetherd's word, beside the field it names. The device page posts it as
// `POST /devices/{name}/actions` and follows it with `GET /actions/{id}`;
// the job page (job-start.js) posts the same input as `POST /jobs`.

import {call} from './api.js';
import {h, show} from './dom.js';

/** How long one long-poll for the result may last (the API allows 300). */
const WAIT_SECONDS = 25;

/**
 * Input properties the form leaves out: tetherd assigns the correlation id
 * (the API accepts one, for callers that keep their own).
 */
const ASSIGNED_BY_TETHERD = new Set(['correlationId']);

/** The "Run an action" section for `device`, once its catalogue loaded. */
export async function actionSection(device) {
  const section = h('section', {'aria-labelledby': 'run-title'}, h('h2', {id: 'run-title'}, 'Run an action'));
  let catalogue;
  try {
    catalogue = await call(`/catalogue?device=${encodeURIComponent(device)}`);
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    section.append(h('p', {class: 'error', role: 'alert'}, error.message));
    return section;
  }
  if (catalogue.length === 0) {
    section.append(h('p', {class: 'empty'}, 'This device accepts no action.'));
    return section;
  }
  const result = h('div', {id: 'action-result', 'aria-live': 'polite'});
  section.append(...actionChooser(catalogue, (entry) => {
    show(result);
    return actionForm(entry, {
      submitLabel: `Run ${entry.name}`,
      send: async (input) => {
        const action = await call(`/devices/${encodeURIComponent(device)}/actions`, {
          method: 'POST', body: {action: entry.name, input}});
        await follow(action, result);
      },
    });
  }), result);
  return section;
}

/**
 * A choice of the catalogue's actions and, below it, the form `formFor`
 * makes for the chosen one (made again whenever the choice changes): the
 * two elements, in order.
 */
export function actionChooser(catalogue, formFor) {
  const choice = h('select', {id: 'action-name', name: 'action'},
    catalogue.map((entry) => h('option', {value: entry.name}, `${entry.name} — ${entry.title}`)));
  const form = h('div', {id: 'action-form'});
  const choose = () => show(form, formFor(catalogue.find((candidate) => candidate.name === choice.value)));
  choice.addEventListener('change', choose);
  choose();
  return [h('div', {class: 'action-choice'}, h('label', {for: 'action-name'}, 'Action'), choice), form];
}

/**
 * The form for one catalogue entry: a field per input property, then the
 * caller's `extra` rows (kept as given, so their values survive choosing
 * another action), and a button labelled `submitLabel`. Submitting reads
 * the input and awaits `send(input)`; an ApiError it throws is shown at
 * the fields its `details` name and above the button.
 */
export function actionForm(entry, {submitLabel, extra = [], send}) {
  const schema = entry.inputSchema ?? {};
  const required = new Set(schema.required ?? []);
  const fields = Object.entries(schema.properties ?? {})
    .filter(([name]) => !ASSIGNED_BY_TETHERD.has(name))
    .map(([name, property]) => field(name, property ?? {}, required.has(name)));
  const formError = h('p', {class: 'error', role: 'alert', id: 'action-error', hidden: true});
  const submit = h('button', {type: 'submit'}, submitLabel);
  const form = h('form', {class: 'action', novalidate: true, 'aria-label': submitLabel},
    entry.description ? h('p', {class: 'muted'}, entry.description) : null,
    fields.length === 0 ? h('p', {class: 'muted'}, 'No input.') : fields.map((one) => one.row),
    extra,
    formError,
    submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(fields, formError);
    const input = {};
    let unreadable = false;
    for (const one of fields) {
      const read = one.read();
      if (read.error) {
        one.refuse(read.error);
        unreadable = true;
      } else if (read.value !== undefined) {
        input[one.name] = read.value;
      }
    }
    if (unreadable) return;
    submit.disabled = true;
    try {
      await send(input);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      refuse(error, fields, formError);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/**
 * One input: its row (label, control, hint, error) and how to read its
 * value (`undefined` when left empty, so the property is left out).
 */
function field(name, property, isRequired) {
  const id = `field-${name}`;
  const errorId = `${id}-error`;
  const hintId = `${id}-hint`;
  const type = property.type;
  const choices = property.enum ?? (property.const !== undefined ? [property.const] : null);
  let control;
  let read;
  if (choices) {
    control = h('select', {id, name},
      isRequired ? null : h('option', {value: ''}, '(not set)'),
      choices.map((value, index) => h('option', {value: String(index)}, String(value))));
    read = () => ({value: control.value === '' ? undefined : choices[Number(control.value)]});
  } else if (type === 'boolean') {
    control = h('select', {id, name},
      isRequired ? null : h('option', {value: ''}, '(not set)'),
      h('option', {value: 'true'}, 'true'),
      h('option', {value: 'false'}, 'false'));
    read = () => ({value: control.value === '' ? undefined : control.value === 'true'});
  } else if (type === 'integer' || type === 'number') {
    control = h('input', {id, name, type: 'number', inputmode: type === 'integer' ? 'numeric' : 'decimal',
      step: type === 'integer' ? '1' : 'any', min: property.minimum, max: property.maximum});
    read = () => {
      const text = control.value.trim();
      return {value: text === '' ? undefined : Number(text)};
    };
  } else if (type === 'string') {
    const secret = /password|secret|token/i.test(name);
    control = h('input', {id, name, type: secret ? 'password' : 'text', autocomplete: 'off', spellcheck: 'false',
      minlength: property.minLength, maxlength: property.maxLength});
    read = () => ({value: control.value === '' ? undefined : control.value});
  } else {
    // Objects, arrays and anything the schema leaves open: JSON, as the API takes it.
    control = h('textarea', {id, name, rows: 4, spellcheck: 'false', placeholder: type === 'array' ? '[ ]' : '{ }'});
    read = () => {
      const text = control.value.trim();
      if (text === '') return {value: undefined};
      try {
        return {value: JSON.parse(text)};
      } catch (error) {
        return {error: `not valid JSON: ${error.message}`};
      }
    };
  }
  control.required = isRequired;
  if (isRequired) control.setAttribute('aria-required', 'true');
  const hint = hintText(property);
  control.setAttribute('aria-describedby', hint ? `${hintId} ${errorId}` : errorId);
  const error = h('p', {class: 'error field-error', id: errorId, hidden: true});
  const row = h('div', {class: 'field'},
    h('label', {for: id}, property.title ?? name, ' ', h('code', {}, name),
      isRequired ? h('span', {class: 'required', title: 'required'}, ' (required)') : null),
    control,
    hint ? h('p', {class: 'muted hint', id: hintId}, hint) : null,
    error);
  return {
    name,
    row,
    read,
    refuse(message) {
      error.textContent = message;
      error.hidden = false;
      control.setAttribute('aria-invalid', 'true');
    },
    clear() {
      error.hidden = true;
      error.textContent = '';
      control.removeAttribute('aria-invalid');
    },
  };
}

/** What the schema says of a value beyond its type, in words. */
function hintText(property) {
  const parts = [];
  if (property.type && !property.enum) parts.push(property.type);
  if (property.minimum !== undefined) parts.push(`at least ${property.minimum}`);
  if (property.maximum !== undefined) parts.push(`at most ${property.maximum}`);
  if (property.minLength !== undefined) parts.push(`${property.minLength} characters or more`);
  if (property.maxLength !== undefined) parts.push(`${property.maxLength} characters or fewer`);
  if (property.type === 'object' || property.type === 'array' || !property.type) parts.push('as JSON');
  return parts.join(', ');
}

function clearErrors(fields, formError) {
  for (const one of fields) one.clear();
  formError.hidden = true;
  formError.textContent = '';
}

/**
 * tetherd's refusal: each entry of `details.fields` beside the field its
 * JSON path (`$.name`, `$.name.inner`, `$.name[0]`) starts with, the rest
 * (and the message) above the button.
 */
function refuse(error, fields, formError) {
  const unplaced = [];
  for (const entry of error.details?.fields ?? []) {
    const top = /^\$\.([^.[]+)/.exec(entry.path ?? '')?.[1];
    const owner = fields.find((one) => one.name === top);
    const text = `${(entry.path ?? '').replace(/^\$\.?/, '') || 'input'}: ${entry.message}`;
    if (owner) owner.refuse(text);
    else unplaced.push(text);
  }
  formError.textContent = unplaced.length ? `${error.message} (${unplaced.join('; ')})` : error.message;
  formError.hidden = false;
}

/** Follows the action until it ends, showing its state as it goes. */
async function follow(action, result) {
  let current = action;
  showResult(result, current);
  while (!isTerminal(current.state)) {
    current = await call(`/actions/${encodeURIComponent(current.correlationId)}?waitSeconds=${WAIT_SECONDS}`);
    showResult(result, current);
  }
}

function isTerminal(state) {
  return !['queued', 'pending', 'delivered'].includes(state);
}

function showResult(result, action) {
  const ended = isTerminal(action.state);
  const outcome = action.state === 'succeeded' ? 'succeeded' : ended ? 'failed' : 'running';
  show(result,
    h('h3', {}, `${action.action}: `, h('span', {class: `state ${outcome}`, id: 'action-state'}, action.state),
      ended ? null : h('span', {class: 'muted'}, ' (waiting for the device…)')),
    action.statusCode !== null && action.statusCode !== undefined
      ? h('p', {}, `Status ${action.statusCode}${action.statusMessage ? `: ${action.statusMessage}` : ''}`)
      : null,
    action.response !== null && action.response !== undefined
      ? h('pre', {class: 'response', id: 'action-response', tabindex: '0'},
        typeof action.response === 'string' ? action.response : JSON.stringify(action.response, null, 2))
      : null,
    h('p', {class: 'muted'}, 'Correlation id ', h('code', {}, action.correlationId)));
}
