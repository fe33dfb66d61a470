// DOM building from elements and text nodes only: everything a node sends is shown as text, never parsed as markup.
const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
export const s = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

export function table(headers, rows, attrs = {}) {
  return h('table', attrs, h('thead', null, h('tr', null, headers.map((x) => h('th', null, x)))),
    h('tbody', null, rows.map((r) => h('tr', null, r.map((c) => h('td', null, c))))));
}

export function dl(pairs, attrs = {}) {
  return h('dl', attrs, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

export const short = (hexText, keep = 10) => (typeof hexText === 'string' && hexText.length > keep * 2 + 2
  ? `${hexText.slice(0, keep + 2)}…${hexText.slice(-keep)}` : String(hexText ?? '—'));

export const when = (ms) => (typeof ms === 'number' && ms > 0 ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '—');

export function kwh(wh) {
  return typeof wh === 'number' ? `${(wh / 1000).toFixed(3)} kWh` : '—';
}
