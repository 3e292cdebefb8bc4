// A device's spec (its desired configuration) as JSON: read by everyone,
// edited and saved by an operator or admin with `PATCH /devices/{name}`
// (`spec`, guarded by `If-Match` so another's change is not overwritten).
// tetherd validates it; its 400 names each field, shown beside the editor.

import {call} from './api.js';
import {h, show} from './dom.js';

/**
 * The spec section of `device`; `mayEdit` gives the editor, else the spec
 * is shown read-only. `saved()` runs after a save (to reload the page).
 */
export function specSection(device, mayEdit, saved) {
  const text = JSON.stringify(device.spec ?? {}, null, 2);
  const section = h('section', {'aria-labelledby': 'spec-title'},
    h('h2', {id: 'spec-title'}, 'Spec'),
    h('p', {class: 'muted'}, `Version ${device.specVersion ?? 0}. See the device contract for its sections.`));
  if (!mayEdit) {
    section.append(h('pre', {class: 'response', id: 'spec-view', tabindex: '0'}, text));
    return section;
  }
  const editor = h('textarea', {id: 'spec-editor', name: 'spec', rows: Math.min(30, Math.max(8, text.split('\n').length + 2)),
    spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'spec-errors'}, text);
  const errors = h('div', {id: 'spec-errors', role: 'alert'});
  const button = h('button', {type: 'submit'}, 'Save spec');
  const form = h('form', {class: 'spec', 'aria-label': 'Edit the spec', novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    show(errors);
    editor.removeAttribute('aria-invalid');
    let spec;
    try {
      spec = JSON.parse(editor.value);
    } catch (error) {
      refuse(editor, errors, `Not JSON: ${error.message}`, []);
      return;
    }
    button.disabled = true;
    try {
      await call(`/devices/${encodeURIComponent(device.name)}`, {
        method: 'PATCH',
        body: {spec},
        headers: {'If-Match': `"${device.specVersion ?? 0}"`},
      });
      saved();
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      const message = error.status === 412
        ? 'Someone changed the spec since this page loaded: reload the page to edit the new version.'
        : error.message;
      refuse(editor, errors, message, error.details?.fields ?? []);
    } finally {
      button.disabled = false;
    }
  }},
    h('label', {for: 'spec-editor'}, 'Spec (JSON)'), editor, errors, button);
  section.append(form);
  return section;
}

/** tetherd's refusal beside the editor: its message and each field path. */
function refuse(editor, errors, message, fields) {
  editor.setAttribute('aria-invalid', 'true');
  show(errors,
    h('p', {class: 'error'}, message),
    fields.length
      ? h('ul', {class: 'problems', id: 'spec-fields'}, fields.map((field) =>
        h('li', {}, h('code', {class: 'field-path'}, field.path), ': ', field.message)))
      : null);
}

/** How to reach the device's network from this computer, with the CLI. */
export function forwardHelp(name) {
  return h('section', {'aria-labelledby': 'forward-title'},
    h('h2', {id: 'forward-title'}, 'Forward a port'),
    h('p', {}, 'To reach a service the device can reach (its own web page, a PLC on its network) from this computer, ',
      'run the CLI here; each connection to the local port is a tunnel through the device:'),
    h('pre', {class: 'response', id: 'forward-command'}, `tether forward-port ${name} 8080 tcp://127.0.0.1:80/`),
    h('p', {class: 'muted'}, 'Then open http://localhost:8080. Replace 127.0.0.1:80 with the host and port as the device sees them. ',
      `For a terminal of your own: tether ssh ${name}`));
}
