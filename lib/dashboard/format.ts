import type { TaskStatus, TaskSummary } from '../client/index.js'

/** How tasks, times and sizes read on the page. */

export const statuses: readonly TaskStatus[] = ['pending', 'running', 'succeeded', 'failed', 'cancelled']
export const isFinal = (status: TaskStatus): boolean => status === 'succeeded' || status === 'failed' || status === 'cancelled'
export const isLive = (status: TaskStatus): boolean => status === 'pending' || status === 'running'

const time = (iso: string | null): number => iso === null ? Number.NaN : Date.parse(iso)

/** The progress in percent (0 to 100, rounded), or null when there is nothing to measure it against. */
export function percent (task: TaskSummary): number | null {
  if (task.target !== null && task.target > 0 && task.progress !== null) {
    return Math.max(0, Math.min(100, Math.round(task.progress / task.target * 100)))
  }
  return task.status === 'succeeded' ? 100 : null
}

/** `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 07 min`. */
export function duration (ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '—'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`
  const seconds = Math.round(ms / 1000)
  if (seconds < 60) return `${seconds} s`
  const minutes = Math.floor(seconds / 60)
  if (minutes < 60) return `${minutes} min ${String(seconds % 60).padStart(2, '0')} s`
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`
}

/** How long the current (or last) attempt ran: started to finished, or to now while running. */
export function elapsed (task: TaskSummary, now: number): string {
  const start = time(task.started)
  if (Number.isNaN(start) || task.status === 'pending') return '—'
  const end = task.status === 'running' ? now : time(task.finished)
  return duration(Math.max(0, end - start))
}

/** `~12 s left`, from the rate of progress since the attempt started; '' when it cannot be told. */
export function eta (task: TaskSummary, now: number): string {
  const { progress, target } = task
  const start = time(task.started)
  if (task.status !== 'running' || target === null || progress === null || progress <= 0 || progress >= target || Number.isNaN(start)) return ''
  const spent = now - start
  if (spent <= 0) return ''
  const left = (target - progress) * spent / progress / 1000
  if (left < 60) return `~${Math.max(1, Math.round(left))} s left`
  if (left < 3600) return `~${Math.round(left / 60)} min left`
  return `~${Math.round(left / 3600)} h left`
}

/** `just now`, `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`. */
export function ago (iso: string, now: number): string {
  const seconds = Math.round((now - time(iso)) / 1000)
  if (Number.isNaN(seconds)) return '—'
  if (seconds < 5) return 'just now'
  if (seconds < 60) return `${seconds} s ago`
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)} h ago`
  return `${Math.floor(seconds / 86_400)} d ago`
}

/** The full local date and time. */
export function fullTime (iso: string | null): string {
  const at = time(iso)
  return Number.isNaN(at) ? '—' : new Date(at).toLocaleString()
}

/** `14:05`, local time. */
export function clock (iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })
}

/** `512 B`, `12.3 KB`, `1.4 MB`. */
export function size (bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`
}

/** A whole uuid (any case, surrounding spaces allowed). */
export const isUuid = (value: string): boolean => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value.trim())
