// A device's metrics over a chosen range: the metric (from the series the
// device has, `GET /devices/{name}/metrics/series`) and the last hour, 6 or
// 24 hours, drawn from `GET /devices/{name}/metrics/query`.

import {call, query} from './api.js';
import {errorBox, h, show} from './dom.js';
import {COLOURS, lineChart} from './chart.js';

const RANGES = [['1h', 'Last hour'], ['6h', 'Last 6 hours'], ['24h', 'Last 24 hours']];
/** The metric shown first when the device has it. */
const FIRST_CHOICE = 'cpu_percent';
/** Lines drawn at most; more series (a metric per disk, say) are named as left out. */
const MAX_LINES = 8;

/** The section; `load()` reads the device's metrics (again). */
export function metricsSection(name) {
  const device = encodeURIComponent(name);
  const metric = h('select', {id: 'metric-name', name: 'metric'});
  const range = h('select', {id: 'metric-range', name: 'range'},
    RANGES.map(([value, label]) => h('option', {value}, label)));
  const body = h('div', {id: 'metric-chart', class: 'chart-box'}, h('p', {class: 'loading'}, 'Loading…'));
  const controls = h('div', {class: 'toolbar'},
    h('label', {for: 'metric-name'}, 'Metric'), metric,
    h('label', {for: 'metric-range'}, 'Range'), range);
  const section = h('section', {'aria-labelledby': 'metrics-title'},
    h('h2', {id: 'metrics-title'}, 'Metrics'), controls, body);

  const draw = async () => {
    if (!metric.value) return;
    show(body, h('p', {class: 'loading'}, 'Loading…'));
    let answer;
    try {
      answer = await call(`/devices/${device}/metrics/query${query({metric: metric.value, since: range.value})}`);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      show(body, errorBox(error));
      return;
    }
    const series = answer.series
      .filter((one) => one.points.length)
      .slice(0, MAX_LINES)
      .map((one) => ({
        label: labelText(one.labels) || answer.metric,
        points: one.points.map((point) => ({at: new Date(point.at), value: point.avg})),
      }));
    if (!series.length) {
      show(body, h('p', {class: 'empty', id: 'metric-empty'}, `No ${answer.metric} points in this range (read from ${answer.resolution} points).`));
      return;
    }
    const rangeLabel = RANGES.find(([value]) => value === range.value)[1].toLowerCase();
    const left = answer.series.length - series.length;
    show(body,
      lineChart(series, new Date(answer.since), new Date(answer.until), `${answer.metric}, ${rangeLabel}`),
      h('ul', {class: 'legend'}, series.map((one, index) =>
        h('li', {}, h('span', {class: `swatch series-${Math.min(index, COLOURS - 1)}`, 'aria-hidden': 'true'}), one.label))),
      h('p', {class: 'muted'},
        `Averages per ${answer.stepSeconds} s bucket, from ${answer.resolution} points.`,
        left > 0 || answer.truncated ? ` ${left} more series not drawn.` : ''));
  };
  metric.addEventListener('change', () => draw());
  range.addEventListener('change', () => draw());

  section.load = async () => {
    let list;
    try {
      list = await call(`/devices/${device}/metrics/series`);
    } catch (error) {
      if (error.name !== 'ApiError') throw error;
      show(body, errorBox(error));
      return;
    }
    const names = [...new Set(list.series.map((one) => one.name))].sort();
    if (!names.length) {
      controls.hidden = true;
      show(body, h('p', {class: 'empty', id: 'metric-empty'}, 'No metrics yet: the device sends them once its spec turns metrics on.'));
      return;
    }
    controls.hidden = false;
    const chosen = metric.value || (names.includes(FIRST_CHOICE) ? FIRST_CHOICE : names[0]);
    show(metric, names.map((one) => h('option', {value: one}, one)));
    metric.value = chosen;
    await draw();
  };
  return section;
}

/** `{cpu: "0"}` → `cpu=0`. */
function labelText(labels) {
  return Object.entries(labels).map(([key, value]) => `${key}=${value}`).join(', ');
}
