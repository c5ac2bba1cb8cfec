// A run's plotted history, kept up to date while the run streams. After one full read (downsampled by the
// service), each poll asks only for the steps since the last one and appends them; the whole history is
// read again once it has grown by a quarter (so the buckets stay even), when steps go back (a resumed job),
// or when a layer that is not plotted turns non-finite (the top layers must be chosen again).

import { api } from "./api.js";

const REREAD_GROWTH = 0.25;
const KEYS = ["steps", "values", "nan", "inf", "-inf"];

export class History {
  constructor(base, fields, top) {
    this.base = base;
    this.fields = fields.join(",");
    this.top = top;
    this.data = null;
    this.readUpTo = null;
  }

  /** Read the whole history, downsampled into `points` step ranges. */
  async full(points) {
    this.data = await this.read({ points, top: this.top });
    this.readUpTo = this.data.last_step ?? null;
    return this.data;
  }

  /** The history up to `lastStep` (the run's last step): the steps since the last read, or all again. */
  async update(lastStep, points) {
    const data = this.data;
    if (data === null || data.last_step === undefined || lastStep === null) return this.full(points);
    if (lastStep === data.last_step) return data;
    const span = this.readUpTo - data.first_step + 1;
    if (lastStep < data.last_step || lastStep - this.readUpTo > span * REREAD_GROWTH) return this.full(points);
    const tail = await this.read({ points, start: data.last_step + 1 }); // every layer: see merge
    if (tail.rows && !merge(data, tail)) return this.full(points);
    return data;
  }

  read(params) {
    const query = new URLSearchParams({ fields: this.fields });
    for (const [name, value] of Object.entries(params)) if (value !== undefined) query.set(name, String(value));
    return api(`${this.base}/series?${query}`);
  }
}

function append(line, more) {
  for (const key of KEYS) line[key] = line[key].concat(more[key]);
}

/** Append `tail` to `data`; false when a layer that is not plotted turned non-finite in it. */
function merge(data, tail) {
  for (const [field, series] of Object.entries(tail.series)) {
    if (!Array.isArray(series)) {
      append(data.series[field], series);
      continue;
    }
    const plotted = new Map(data.series[field].map((layer) => [layer.layer, layer]));
    for (const layer of series) {
      if (plotted.has(layer.layer)) append(plotted.get(layer.layer), layer);
      else if (layer.nan.length || layer.inf.length || layer["-inf"].length) return false;
    }
  }
  data.last_step = tail.last_step;
  data.rows += tail.rows;
  return true;
}
