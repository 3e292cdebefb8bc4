// A line chart as SVG, drawn here: no library, no inline style (the CSP
// allows neither); lines take their colour from a class in style.css.

import {svg} from './dom.js';

const WIDTH = 720;
const HEIGHT = 260;
/** Room for the value axis on the left and the time axis below. */
const LEFT = 64;
const RIGHT = 12;
const TOP = 12;
const BOTTOM = 28;
/** Series beyond this many share the last colour class. */
export const COLOURS = 6;

/**
 * An SVG chart of `series` ([{label, points: [{at: Date, value}]}]) from
 * `since` to `until` (Dates), with `title` for screen readers.
 */
export function lineChart(series, since, until, title) {
  const values = series.flatMap((one) => one.points.map((point) => point.value));
  let low = Math.min(...values, 0);
  let high = Math.max(...values);
  if (high === low) high = low + 1;
  const span = until.getTime() - since.getTime();
  const x = (at) => LEFT + ((at.getTime() - since.getTime()) / span) * (WIDTH - LEFT - RIGHT);
  const y = (value) => TOP + (1 - (value - low) / (high - low)) * (HEIGHT - TOP - BOTTOM);
  const chart = svg('svg', {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart', role: 'img', 'aria-label': title},
    svg('title', {}, title));
  // Four value gridlines with their values, two times below.
  for (let step = 0; step <= 4; step += 1) {
    const value = low + ((high - low) * step) / 4;
    const at = y(value);
    chart.append(
      svg('line', {x1: LEFT, x2: WIDTH - RIGHT, y1: at, y2: at, class: 'grid'}),
      svg('text', {x: LEFT - 6, y: at + 4, 'text-anchor': 'end', class: 'axis'}, number(value)));
  }
  const time = (at) => at.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
  chart.append(
    svg('text', {x: LEFT, y: HEIGHT - 8, 'text-anchor': 'start', class: 'axis'}, time(since)),
    svg('text', {x: WIDTH - RIGHT, y: HEIGHT - 8, 'text-anchor': 'end', class: 'axis'}, time(until)));
  series.forEach((one, index) => {
    const colour = `series-${Math.min(index, COLOURS - 1)}`;
    const path = one.points
      .map((point, i) => `${i === 0 ? 'M' : 'L'}${x(point.at).toFixed(1)},${y(point.value).toFixed(1)}`)
      .join(' ');
    chart.append(svg('path', {d: path, class: `line ${colour}`, fill: 'none'},
      svg('title', {}, one.label)));
    // A single point draws no line: a dot shows it.
    if (one.points.length === 1) {
      const [point] = one.points;
      chart.append(svg('circle', {cx: x(point.at), cy: y(point.value), r: 3, class: `dot ${colour}`}));
    }
  });
  return chart;
}

/** A value short enough for an axis: 1.2k, 3.4M, 0.25. */
export function number(value) {
  const magnitude = Math.abs(value);
  for (const [size, suffix] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
    if (magnitude >= size) return `${Number((value / size).toFixed(1))}${suffix}`;
  }
  return String(Number(value.toFixed(magnitude < 10 ? 2 : 1)));
}
