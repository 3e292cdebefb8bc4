// A small terminal on the device: a `shell` tunnel (ADR 0021) as the CLI's
// `tether ssh` opens it, over a WebSocket from this page. The device runs a
// `dumb` terminal, so output is mostly plain text; the control sequences
// that still come are removed, not drawn. Keys are sent a line at a time,
// with buttons for the control keys a line cannot carry.

import {call, openSocket} from './api.js';
import {h} from './dom.js';

// Channels of the tunnel's frames (tether_proto::tunnel).
const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const CONTROL = 3;
const CLOSE = 4;
/** Output kept on the page, in characters; older output is dropped. */
const MAX_OUTPUT = 200_000;
const ROWS = 24;
const MIN_COLS = 20;
const MAX_COLS = 1000;

/**
 * Removes terminal control sequences from `text`: CSI (`ESC [ … final`),
 * OSC (`ESC ] … BEL` or `ESC \`), other two-byte escapes, and bells;
 * applies backspaces; `\r\n` becomes `\n` and a lone `\r` is dropped.
 * Answers the clean text and what may be the start of a sequence split
 * across messages, to be prefixed to the next.
 */
export function clean(text) {
  let rest = '';
  const unfinished = /\x1b(\[[0-?]*[ -/]*|\][^\x07\x1b]*|)$/.exec(text);
  if (unfinished) {
    rest = unfinished[0];
    text = text.slice(0, unfinished.index);
  }
  const plain = text
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b[@-Z\\-_()#%*+][0-9A-Za-z]?/g, '')
    .replace(/\r\n/g, '\n')
    .replace(/[\r\x07\x00]/g, '');
  let out = '';
  for (const char of plain) {
    if (char === '\b') out = out.slice(0, -1);
    else out += char;
  }
  return {text: out, rest};
}

/** The terminal section for device `name`; closes when `signal` aborts. */
export function terminalSection(name, signal) {
  const output = h('pre', {class: 'terminal', id: 'terminal-output', tabindex: '0', 'aria-live': 'polite', 'aria-label': 'Terminal output'});
  const line = h('input', {id: 'terminal-input', name: 'line', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off', disabled: true});
  const state = h('p', {class: 'muted', id: 'terminal-state'}, 'Opens a shell on the device, as tether ssh does.');
  const open = h('button', {type: 'button', id: 'terminal-open'}, 'Open terminal');
  const keys = [['Ctrl-C', '\x03'], ['Ctrl-D', '\x04'], ['Tab', '\t']].map(([label, bytes]) =>
    h('button', {type: 'button', class: 'secondary', disabled: true, onclick: () => send(bytes)}, label));
  const form = h('form', {class: 'terminal-input', 'aria-label': 'Send to the terminal', onsubmit: (event) => {
    event.preventDefault();
    send(`${line.value}\r`);
    line.value = '';
  }},
    h('label', {for: 'terminal-input'}, 'Input'), line,
    h('button', {type: 'submit', disabled: true}, 'Send'), keys);
  const section = h('section', {'aria-labelledby': 'terminal-title', class: 'terminal-box'},
    h('h2', {id: 'terminal-title'}, 'Terminal'),
    state, open, output, form);

  let socket = null;
  let pending = '';
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const controls = [line, form.querySelector('button[type=submit]'), ...keys];
  const write = (text) => {
    const {text: plain, rest} = clean(pending + text);
    pending = rest;
    const follow = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
    output.textContent = (output.textContent + plain).slice(-MAX_OUTPUT);
    if (follow) output.scrollTop = output.scrollHeight;
  };
  const frame = (channel, payload) => {
    const bytes = new Uint8Array(payload.length + 1);
    bytes[0] = channel;
    bytes.set(payload, 1);
    return bytes;
  };
  const send = (text) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(frame(STDIN, encoder.encode(text)));
  };
  const columns = () => {
    // The width of one character of the terminal's font, measured.
    const probe = h('span', {class: 'probe'}, 'M'.repeat(10));
    output.append(probe);
    const width = probe.getBoundingClientRect().width / 10;
    probe.remove();
    const cols = width ? Math.floor((output.clientWidth - 16) / width) : 80;
    return Math.max(MIN_COLS, Math.min(MAX_COLS, cols));
  };
  const resize = () => {
    if (socket?.readyState !== WebSocket.OPEN) return;
    const message = JSON.stringify({type: 'resize', cols: columns(), rows: ROWS});
    socket.send(frame(CONTROL, encoder.encode(message)));
  };
  const ended = (why) => {
    state.textContent = why;
    for (const control of controls) control.disabled = true;
    open.hidden = false;
    open.textContent = 'Open again';
    window.removeEventListener('resize', resize);
  };

  open.addEventListener('click', () => {
    open.hidden = true;
    output.textContent = '';
    pending = '';
    state.textContent = 'Opening: tetherd asks the device to dial back (up to 30 s)…';
    const path = `/devices/${encodeURIComponent(name)}/tunnel?kind=shell&term=dumb&cols=${columns()}&rows=${ROWS}`;
    const current = openSocket(path);
    socket = current;
    let opened = false;
    let exit = null;
    current.addEventListener('open', () => {
      opened = true;
      state.textContent = 'Connected. Type a command and press Enter.';
      for (const control of controls) control.disabled = false;
      line.focus();
      window.addEventListener('resize', resize);
    });
    current.addEventListener('message', (event) => {
      const bytes = new Uint8Array(event.data);
      if (!bytes.length) return;
      const payload = bytes.subarray(1);
      switch (bytes[0]) {
        case STDOUT:
        case STDERR:
          write(decoder.decode(payload, {stream: true}));
          break;
        case CONTROL:
          exit = control(JSON.parse(new TextDecoder().decode(payload))) ?? exit;
          break;
        case CLOSE:
          break;
        default:
      }
    });
    current.addEventListener('close', () => {
      if (socket !== current) return;
      socket = null;
      if (!opened) {
        ended('The terminal could not be opened: the device may be offline, not offer tunnels, or not dial back in time (tether ssh names the reason).');
        // A browser does not tell why a WebSocket was refused: an ended
        // session is found the usual way, and returns to the login page.
        call('/users/me').catch(() => {});
      } else {
        ended(exit ?? 'The shell ended.');
      }
    });
  });
  signal.addEventListener('abort', () => socket?.close());
  return section;
}

/** What a control message means to the reader, if it ends the shell. */
function control(message) {
  if (message.type === 'exit') {
    return message.signal ? `The shell was ended by signal ${message.signal}.` : `The shell ended with exit code ${message.code ?? 0}.`;
  }
  if (message.type === 'error') return `The tunnel failed (${message.status}): ${message.message}`;
  return null;
}
