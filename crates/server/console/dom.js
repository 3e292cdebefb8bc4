// Building elements from data without parsing text as markup: text from the
// API (labels, names, messages) always becomes a text node.

/**
 * An element: `h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child)`.
 * Attributes whose value is null, undefined or false are left out; `true`
 * sets an empty attribute. Children may be nodes, strings, numbers, arrays
 * of those, or null/false (skipped).
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces what `parent` holds with `children`. */
export function show(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
}

/** A `<dl>` of [term, description] pairs, skipping empty descriptions. */
export function facts(pairs) {
  const list = h('dl', {class: 'facts'});
  for (const [term, description] of pairs) {
    if (description === null || description === undefined || description === '') continue;
    list.append(h('dt', {}, term), h('dd', {}, description));
  }
  return list;
}

/** A message for a failed load, with the API's own words. */
export function errorBox(error) {
  return h('p', {class: 'error', role: 'alert'}, error.message);
}

/**
 * Runs `change` (a call that changes something) with `buttons` disabled
 * meanwhile, and answers `{value}`; tetherd's refusal is shown in `line`
 * (a hidden `.error` element) in its own words, and answers null. Anything
 * else (tetherd unreachable, the session ended) is thrown to the page.
 */
export async function attempt(line, change, buttons = []) {
  line.hidden = true;
  for (const button of buttons) button.disabled = true;
  try {
    return {value: await change()};
  } catch (error) {
    if (error.name !== 'ApiError') throw error;
    line.textContent = error.message;
    line.hidden = false;
    return null;
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

/** A presence badge: online or offline, in words, not only colour. */
export function presence(value) {
  return h('span', {class: `badge ${value === 'online' ? 'online' : 'offline'}`}, value);
}

/**
 * A failed load: for a 403, the forbidden state (what the caller's role may
 * not do, and tetherd's own words naming the role needed); else the error.
 * `doing` finishes "your role X may not …", e.g. "read alert deliveries".
 */
export function loadFailure(error, role, doing) {
  if (error.status !== 403) return errorBox(error);
  return forbidden(role, doing, error.message);
}

/** The forbidden state: this role may not do this here. */
export function forbidden(role, doing, why) {
  return h('div', {class: 'forbidden', role: 'alert'},
    h('p', {class: 'forbidden-title'}, `Forbidden: your role ${role} may not ${doing}.`),
    why ? h('p', {class: 'muted'}, why) : null,
    h('p', {class: 'muted'}, 'Ask an admin for a role that may, or use the pages your role opens.'));
}

/**
 * The `continue` pager of a listing: `href(token, pageNumber)` makes the
 * fragment of a page; the first page has no token.
 */
export function pager(page, pageNumber, href) {
  return h('nav', {class: 'pager', 'aria-label': 'Pages'},
    pageNumber > 1 ? h('a', {href: href('', 1)}, 'First page') : null,
    page.continue
      ? h('a', {rel: 'next', href: href(page.continue, pageNumber + 1)}, 'Next page')
      : h('span', {class: 'muted'}, 'Last page'));
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An SVG element, as `h` makes HTML ones. Geometry and `class` are
 * attributes, not style, so the CSP allows them; colours come from
 * style.css.
 */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

/**
 * One stacked bar of `parts` ([count, kind]) out of `total`, a segment per
 * kind (its class) titled with its count; `label` says it in words for
 * those who do not see it.
 */
export function stackedBar(parts, total, {className, label}) {
  const bar = svg('svg', {class: className, viewBox: `0 0 ${Math.max(total, 1)} 1`, preserveAspectRatio: 'none',
    role: 'img', 'aria-label': label});
  let x = 0;
  for (const [count, kind] of parts) {
    if (!count) continue;
    bar.append(svg('rect', {class: kind, x, y: 0, width: count, height: 1}, svg('title', {}, `${count} ${kind}`)));
    x += count;
  }
  return bar;
}
