import { getJSON } from './api.js'
import { byId, h, svg } from './dom.js'
import { clock, duration } from './format.js'
import { report } from './notices.js'

/*
 * Two charts from GET {prefix}/stats, drawn as plain SVG at the figure's own width:
 * tasks finished per minute over the last hour (stacked by final status), and each
 * task's duration percentiles (p50 over p95). Each SVG carries a summary as its label,
 * and the numbers are in a visually hidden table too.
 */

interface Minute { start: string, succeeded: number, failed: number, cancelled: number }
interface Durations { task: string, count: number, p50: number, p95: number }
export interface Stats { from: string, to: string, minutes: Minute[], durations: Durations[], truncated: boolean }

const finals = ['succeeded', 'failed', 'cancelled'] as const
const count = (value: unknown): number => typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : 0

/** The stats as the server sends them; anything malformed reads as zero. */
function parse (value: unknown): Stats {
  const body = (typeof value === 'object' && value !== null ? value : {}) as Partial<Record<keyof Stats, unknown>>
  const list = (field: unknown): Array<Record<string, unknown>> => Array.isArray(field) ? field.filter((item): item is Record<string, unknown> => typeof item === 'object' && item !== null) : []
  return {
    from: String(body.from ?? ''),
    to: String(body.to ?? ''),
    minutes: list(body.minutes).map(minute => ({ start: String(minute['start']), succeeded: count(minute['succeeded']), failed: count(minute['failed']), cancelled: count(minute['cancelled']) })),
    durations: list(body.durations).map(row => ({ task: String(row['task']), count: count(row['count']), p50: count(row['p50']), p95: count(row['p95']) })),
    truncated: body.truncated === true,
  }
}

/** A round number at or above `value`: 1, 1.5, 2, 3, 4, 5, 6 or 8 times a power of ten. */
function niceMax (value: number): number {
  if (value <= 0) return 1
  const power = 10 ** Math.floor(Math.log10(value))
  for (const step of [1, 1.5, 2, 3, 4, 5, 6, 8, 10]) if (step * power >= value) return step * power
  return 10 * power
}

const hiddenTable = (caption: string, head: string[], rows: string[][]): HTMLTableElement =>
  h('table', { class: 'visually-hidden' }, h('caption', null, caption),
    h('thead', null, h('tr', null, ...head.map(cell => h('th', { scope: 'col' }, cell)))),
    h('tbody', null, ...rows.map(([first, ...rest]) => h('tr', null, h('th', { scope: 'row' }, first), ...rest.map(cell => h('td', null, cell))))))

const legend = (items: Array<[string, string]>): HTMLUListElement =>
  h('ul', { class: 'legend' }, ...items.map(([kind, label]) => h('li', null, h('span', { class: `swatch c-${kind}` }), label)))

export interface Charts {
  /** Fetches the stats and draws them. */
  refresh (): Promise<void>
  /** Refreshes after a task ended: at most once every 5 s. */
  soon (): void
}

export function createCharts (): Charts {
  const finished = byId('chart-finished')
  const durations = byId('chart-durations')
  let stats: Stats | undefined
  let last = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  let width = 0

  const draw = (drawn: Stats): void => {
    stats = drawn
    width = finished.clientWidth
    const note = drawn.truncated ? h('p', { class: 'note' }, 'Counted from the most recent records only.') : ''
    area(finished).replaceChildren(...perMinute(drawn.minutes, Math.max(280, width)), note)
    area(durations).replaceChildren(...percentiles(drawn.durations, Math.max(280, durations.clientWidth)), typeof note === 'string' ? note : note.cloneNode(true))
  }

  const charts: Charts = {
    async refresh () {
      clearTimeout(timer)
      timer = undefined
      last = Date.now()
      try {
        draw(parse(await getJSON('/stats?minutes=60')))
      } catch (err) {
        report(err)
        if (stats === undefined) for (const figure of [finished, durations]) area(figure).replaceChildren(h('p', { class: 'empty' }, 'The statistics could not be loaded.'))
      }
    },
    soon () {
      if (timer === undefined) timer = setTimeout(() => { void charts.refresh() }, Math.max(0, last + 5000 - Date.now()))
    },
  }
  setInterval(() => { void charts.refresh() }, 60_000)
  // Drawn at the figure's width (text stays readable at any size): again when it changes.
  new ResizeObserver(() => {
    if (stats !== undefined && Math.abs(finished.clientWidth - width) > 8) draw(stats)
  }).observe(finished)
  return charts
}

/** The figure's drawing area, after its caption. */
function area (figure: HTMLElement): HTMLElement {
  let element = figure.querySelector<HTMLElement>('.chart')
  if (element === null) {
    element = h('div', { class: 'chart' })
    figure.append(element)
  }
  return element
}

function perMinute (minutes: Minute[], width: number): Node[] {
  const totals = minutes.map(minute => minute.succeeded + minute.failed + minute.cancelled)
  const sums = finals.map(kind => minutes.reduce((sum, minute) => sum + minute[kind], 0))
  const all = totals.reduce((sum, total) => sum + total, 0)
  if (all === 0) return [h('p', { class: 'empty' }, 'No task finished in the last hour.')]
  const busiest = totals.indexOf(Math.max(...totals))
  const [succeeded, failed, cancelled] = sums
  const summary = `${all} ${all === 1 ? 'task' : 'tasks'} finished in the last hour: ${succeeded} succeeded, ${failed} failed, ${cancelled} cancelled; the busiest minute, ${clock((minutes[busiest] as Minute).start)}, had ${totals[busiest]}.`
  const height = 180
  const left = 34
  const bottom = 22
  const plot = { width: width - left - 8, height: height - bottom - 8 }
  const top = niceMax(Math.max(...totals))
  const step = plot.width / Math.max(1, minutes.length)
  const y = (value: number): number => 8 + plot.height - value / top * plot.height
  const chart = svg('svg', { role: 'img', 'aria-label': summary, width, height, viewBox: `0 0 ${width} ${height}`, class: 'plot' })
  for (const tick of [0, top / 2, top]) {
    if (!Number.isInteger(tick)) continue
    chart.append(svg('line', { x1: left, x2: width - 8, y1: y(tick), y2: y(tick), class: tick === 0 ? 'axis' : 'grid' }),
      svg('text', { x: left - 6, y: y(tick) + 4, 'text-anchor': 'end' }, tick))
  }
  minutes.forEach((minute, index) => {
    if ((totals[index] ?? 0) === 0) return
    const group = svg('g', null, svg('title', null, `${clock(minute.start)}: ${finals.map(kind => `${minute[kind]} ${kind}`).join(', ')}`))
    let base = 0
    for (const kind of finals) {
      if (minute[kind] === 0) continue
      group.append(svg('rect', { x: left + index * step + (step > 4 ? 0.5 : 0), y: y(base + minute[kind]), width: Math.max(1, step - (step > 4 ? 1 : 0)), height: minute[kind] / top * plot.height, class: `c-${kind}` }))
      base += minute[kind]
    }
    chart.append(group)
  })
  for (let index = 0; index < minutes.length; index += 15) {
    chart.append(svg('text', { x: left + index * step, y: height - 6, 'text-anchor': index === 0 ? 'start' : 'middle' }, clock((minutes[index] as Minute).start)))
  }
  chart.append(svg('text', { x: width - 8, y: height - 6, 'text-anchor': 'end' }, 'now'))
  const rows = minutes.flatMap((minute, index) => (totals[index] ?? 0) === 0 ? [] : [[clock(minute.start), String(minute.succeeded), String(minute.failed), String(minute.cancelled)]])
  return [
    chart,
    legend(finals.map((kind, index) => [kind, `${kind} ${sums[index] ?? 0}`])),
    hiddenTable('Tasks finished per minute', ['Minute', 'Succeeded', 'Failed', 'Cancelled'], rows),
  ]
}

function percentiles (rows: Durations[], width: number): Node[] {
  if (rows.length === 0) return [h('p', { class: 'empty' }, 'No finished task to measure yet.')]
  const summary = `Duration by task, median (p50) and 95th percentile (p95): ${rows.map(row => `${row.task} ${duration(row.p50)} and ${duration(row.p95)} over ${row.count} ${row.count === 1 ? 'run' : 'runs'}`).join('; ')}.`
  const label = Math.min(140, Math.round(width * 0.3))
  const values = 112
  const area = Math.max(40, width - label - values - 8)
  const line = 30
  const height = rows.length * line + 24
  const top = Math.max(1, ...rows.map(row => row.p95))
  const x = (value: number): number => label + value / top * area
  const chart = svg('svg', { role: 'img', 'aria-label': summary, width, height, viewBox: `0 0 ${width} ${height}`, class: 'plot' })
  chart.append(svg('line', { x1: label, x2: label, y1: 0, y2: height - 20, class: 'axis' }))
  for (const tick of [top / 2, top]) {
    chart.append(svg('line', { x1: x(tick), x2: x(tick), y1: 0, y2: height - 20, class: 'grid' }),
      svg('text', { x: x(tick), y: height - 6, 'text-anchor': 'middle' }, duration(tick)))
  }
  chart.append(svg('text', { x: label, y: height - 6, 'text-anchor': 'middle' }, '0'))
  rows.forEach((row, index) => {
    const top = index * line + 6
    const name = row.task.length > 18 ? `${row.task.slice(0, 17)}…` : row.task
    chart.append(svg('g', null,
      svg('title', null, `${row.task}: p50 ${duration(row.p50)}, p95 ${duration(row.p95)}, ${row.count} ${row.count === 1 ? 'run' : 'runs'}`),
      svg('text', { x: label - 8, y: top + 13, 'text-anchor': 'end', class: 'name' }, name),
      svg('rect', { x: label, y: top, width: Math.max(1, x(row.p95) - label), height: 18, class: 'c-p95', rx: 2 }),
      svg('rect', { x: label, y: top + 4, width: Math.max(1, x(row.p50) - label), height: 10, class: 'c-p50', rx: 2 }),
      svg('text', { x: x(row.p95) + 6, y: top + 13 }, `${duration(row.p50)} / ${duration(row.p95)}`)))
  })
  return [
    chart,
    legend([['p50', 'p50 (median)'], ['p95', 'p95']]),
    hiddenTable('Duration by task', ['Task', 'Runs', 'p50', 'p95'], rows.map(row => [row.task, String(row.count), duration(row.p50), duration(row.p95)])),
  ]
}
