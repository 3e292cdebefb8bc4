// Times as people read them: relative ("3 min ago"), the absolute time on
// hover and for screen readers in the element's `datetime`.

const UNITS = [
  ['year', 365 * 24 * 3600],
  ['month', 30 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
  ['second', 1],
];

const relativeFormat = new Intl.RelativeTimeFormat(undefined, {numeric: 'auto', style: 'short'});
const absoluteFormat = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'long'});

/** "3 min. ago", "in 2 hr.", "now": `at` relative to `now` (both Dates or ms). */
export function relative(at, now = Date.now()) {
  const seconds = Math.round((new Date(at).getTime() - new Date(now).getTime()) / 1000);
  if (Math.abs(seconds) < 10) return relativeFormat.format(0, 'second');
  for (const [unit, length] of UNITS) {
    if (Math.abs(seconds) >= length) {
      return relativeFormat.format(Math.trunc(seconds / length), unit);
    }
  }
  return relativeFormat.format(seconds, 'second');
}

/** The full date and time in the reader's locale and time zone. */
export function absolute(at) {
  return absoluteFormat.format(new Date(at));
}

/** A `<time>` showing `iso` relative, absolute on hover; "never" for none. */
export function timeElement(iso) {
  const element = document.createElement('time');
  if (!iso) {
    element.textContent = 'never';
    return element;
  }
  element.dateTime = iso;
  element.title = absolute(iso);
  element.dataset.relative = '';
  element.textContent = relative(iso);
  return element;
}

/** Keeps every relative time on the page current. */
export function refreshRelativeTimes(root = document) {
  for (const element of root.querySelectorAll('time[data-relative]')) {
    element.textContent = relative(element.dateTime);
  }
}
