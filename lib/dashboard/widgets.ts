import type { TaskStatus, TaskSummary } from '../client/index.js'
import { attr, h, text } from './dom.js'
import { eta, percent } from './format.js'

/** A status badge: its colour always comes with its text. */
export function badge (status: TaskStatus): HTMLSpanElement {
  return h('span', { class: `badge s-${status}` }, status)
}

export function setBadge (element: HTMLElement, status: TaskStatus): void {
  element.className = `badge s-${status}`
  text(element, status)
}

export interface ProgressView {
  element: HTMLElement
  update (task: TaskSummary, now: number): void
}

/**
 * A progress bar (role="progressbar", 0 to 100, the percentage as its text) and the
 * time left while running with a target. Without a target it has no value (indeterminate).
 */
export function progressView (): ProgressView {
  const fill = h('span', { class: 'fill' })
  const label = h('span', { class: 'pct' })
  const bar = h('div', { class: 'bar', role: 'progressbar', 'aria-label': 'Progress', 'aria-valuemin': 0, 'aria-valuemax': 100 },
    h('span', { class: 'track' }, fill), label)
  const left = h('span', { class: 'eta' })
  const element = h('div', { class: 'progress' }, bar, left)
  return {
    element,
    update (task, now) {
      const value = percent(task)
      attr(bar, 'aria-valuenow', value)
      bar.classList.toggle('busy', value === null && task.status === 'running')
      bar.dataset['status'] = task.status
      fill.style.width = `${value ?? 0}%`
      text(label, value === null ? (task.progress === null ? '—' : String(task.progress)) : `${value}%`)
      text(left, eta(task, now))
    },
  }
}
