import type { TaskStatus, TaskSummary } from '../client/index.js'
import { client } from './api.js'
import { attr, byId, h, text } from './dom.js'
import { ago, elapsed, fullTime, isLive } from './format.js'
import type { Live } from './live.js'
import { report } from './notices.js'
import { badge, progressView, setBadge, type ProgressView } from './widgets.js'

/*
 * The table of tasks: one page of GET {prefix} at a time (cursor paging, newest first),
 * filtered by status and task. Rows of pending and running tasks follow their task over
 * the socket and change in place. On page 1, tasks created elsewhere come on top as the
 * socket hears of them; rows are never dropped from the bottom (the Older cursor stays
 * right), so after 50 of them a button offers to read the page again instead.
 */

const pageSize = 50
/** New rows put on top of page 1 before the button takes over. */
const maxAdded = 50
/**
 * Rows followed at once, the newest first: with the detail, the socket stays well under
 * the server's 100 subscriptions (streams.maxSubscriptions). The others show what the
 * page read.
 */
const maxFollowed = 85

interface Row {
  element: HTMLTableRowElement
  task: TaskSummary
  status: HTMLSpanElement
  progress: ProgressView
  attempt: HTMLTableCellElement
  created: HTMLTimeElement
  duration: HTMLTableCellElement
  stop: (() => void) | undefined
}

const summary = ({ uuid, task, status, progress, target, attempt, created, started, finished, error }: TaskSummary): TaskSummary =>
  ({ uuid, task, status, progress, target, attempt, created, started, finished, error })

export interface TaskTable {
  /** The filters; `reset()` applies them. */
  status: TaskStatus | ''
  task: string
  /** Back to page 1 (a filter changed, or the user signed in). */
  reset (): Promise<void>
  /** A new task (started on this page, or heard of on the socket): on top of page 1 when the filters let it in. */
  offer (task: TaskSummary): void
  /** A deleted task leaves the table. */
  remove (uuid: string): void
  /** Times move on: durations of running tasks, time left, "created … ago". */
  tick (now: number): void
}

export function createTable (live: Live, open: (uuid: string) => void): TaskTable {
  const table = byId<HTMLTableElement>('tasks')
  const body = table.tBodies[0] ?? table.createTBody()
  const olderButton = byId<HTMLButtonElement>('older')
  const newerButton = byId<HTMLButtonElement>('newer')
  const rows = new Map<string, Row>()
  /** The cursors of the newer pages, for "Newer"; the current page's is `cursor`. */
  let newer: Array<string | undefined> = []
  let cursor: string | undefined
  let next: string | null = null
  let loads = 0
  let busy = false
  /** Tasks created while page 1 loads: offered again once it is shown. */
  let early: TaskSummary[] = []
  /** Rows put on top since the page was read, and the new tasks left out after that. */
  let added = 0
  const unseen = new Set<string>()
  const moreButton = byId<HTMLButtonElement>('new-tasks')

  const view: TaskTable = {
    status: '',
    task: '',
    reset () {
      newer = []
      cursor = undefined
      return load()
    },
    offer (task) {
      if (newer.length > 0 || cursor !== undefined || rows.has(task.uuid)) return
      if (busy) {
        early.push(task)
        return
      }
      if ((view.status !== '' && view.status !== task.status) || (view.task !== '' && view.task !== task.task)) return
      if (added >= maxAdded) {
        unseen.add(task.uuid)
        moreButton.hidden = false
        text(moreButton, `${unseen.size} new ${unseen.size === 1 ? 'task' : 'tasks'} — show`)
        return
      }
      added++
      body.querySelector('tr.empty')?.remove()
      body.prepend(row(summary(task)).element)
      follow()
    },
    remove (uuid) {
      const found = rows.get(uuid)
      if (found === undefined) return
      found.stop?.()
      found.element.remove()
      rows.delete(uuid)
      if (rows.size === 0) empty()
      follow()
    },
    tick (now) {
      for (const found of rows.values()) times(found, now)
    },
  }

  /** Loads the current page; an answer overtaken by a later load is dropped. */
  const load = async (): Promise<void> => {
    const current = ++loads
    busy = true
    table.setAttribute('aria-busy', 'true')
    try {
      const page = await client.list({
        limit: pageSize,
        ...(view.status === '' ? {} : { status: view.status }),
        ...(view.task === '' ? {} : { task: view.task }),
        ...(cursor === undefined ? {} : { cursor }),
      })
      if (current !== loads) return
      next = page.next
      show(page.tasks)
    } catch (err) {
      if (current !== loads) return
      report(err)
      if (rows.size === 0) empty('The tasks could not be loaded.')
    } finally {
      if (current === loads) {
        busy = false
        table.removeAttribute('aria-busy')
        // Those the page read are there already; the others are newer: on top.
        for (const task of early.splice(0)) view.offer(task)
      }
      pager()
    }
  }

  const show = (tasks: TaskSummary[]): void => {
    for (const found of rows.values()) found.stop?.()
    rows.clear()
    added = 0
    unseen.clear()
    moreButton.hidden = true
    body.replaceChildren(...tasks.map(task => row(summary(task)).element))
    if (tasks.length === 0) empty()
    follow()
  }

  /** Follows the newest live rows, at most maxFollowed, and lets go of the others. */
  const follow = (): void => {
    let left = maxFollowed
    for (const element of Array.from(body.rows)) {
      const found = rows.get(element.dataset['uuid'] ?? '')
      if (found === undefined || !isLive(found.task.status)) continue
      if (left-- > 0) found.stop ??= live.follow(found.task.uuid, { update: record => update(found, record) })
      else if (found.stop !== undefined) {
        found.stop()
        found.stop = undefined
      }
    }
  }

  const update = (found: Row, record: TaskSummary): void => {
    const ended = isLive(found.task.status) && !isLive(record.status)
    found.task = summary(record)
    render(found)
    // One subscription fewer: the next live row may take it.
    if (ended) follow()
  }

  const empty = (message = view.status !== '' || view.task !== '' ? 'No tasks match these filters.' : 'No tasks yet.'): void => {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 6 }, message)))
  }

  const pager = (): void => {
    olderButton.disabled = next === null
    newerButton.disabled = newer.length === 0
    text(byId('page'), `Page ${newer.length + 1}`)
  }

  const row = (task: TaskSummary): Row => {
    const status = badge(task.status)
    const progress = progressView()
    const attempt = h('td', { class: 'num' })
    const created = h('time', { datetime: task.created })
    const duration = h('td', { class: 'num' })
    const element = h('tr', { 'data-uuid': task.uuid, tabindex: 0 },
      h('td', { class: 'name' }, task.task),
      h('td', null, status),
      h('td', null, progress.element),
      attempt,
      h('td', null, created),
      duration)
    const found: Row = { element, task, status, progress, attempt, created, duration, stop: undefined }
    rows.set(task.uuid, found)
    render(found)
    return found
  }

  const render = (found: Row, now = Date.now()): void => {
    const { task } = found
    setBadge(found.status, task.status)
    text(found.attempt, String(task.attempt))
    found.created.title = fullTime(task.created)
    attr(found.element, 'title', task.error)
    times(found, now)
  }

  const times = (found: Row, now: number): void => {
    found.progress.update(found.task, now)
    text(found.created, ago(found.task.created, now))
    text(found.duration, elapsed(found.task, now))
  }

  olderButton.addEventListener('click', () => {
    if (next === null) return
    newer.push(cursor)
    cursor = next
    void load()
  })
  moreButton.addEventListener('click', () => { void view.reset() })
  live.watch({
    created: task => view.offer(task),
    // Watching (again): tasks created before it (since the page was read, or while the
    // socket was away) were not announced, so page 1 is read again.
    resumed () {
      if (newer.length === 0 && cursor === undefined) void load()
    },
  })
  newerButton.addEventListener('click', () => {
    if (newer.length === 0) return
    cursor = newer.pop()
    void load()
  })
  // A click anywhere on a row, or Enter (or Space) on a focused one, opens its detail.
  body.addEventListener('click', (event) => {
    const uuid = (event.target as Element).closest('tr')?.dataset['uuid']
    if (uuid !== undefined) open(uuid)
  })
  body.addEventListener('keydown', (event) => {
    const target = event.target as HTMLElement
    const uuid = target.dataset['uuid']
    if ((event.key !== 'Enter' && event.key !== ' ') || target.tagName !== 'TR' || uuid === undefined) return
    event.preventDefault()
    open(uuid)
  })
  return view
}
