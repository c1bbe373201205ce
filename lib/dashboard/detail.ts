import type { TaskState } from '../client/index.js'
import { client, TaskApiError } from './api.js'
import { byId, h, text } from './dom.js'
import { elapsed, fullTime, isFinal, isLive, isUuid, size } from './format.js'
import type { Change, Live } from './live.js'
import { report } from './notices.js'
import { progressView, setBadge } from './widgets.js'

/*
 * One task in full, followed live: progress and time left, times, messages as they
 * arrive, outputs (folded when large), the error; Cancel while it is live, Delete (after
 * an inline confirmation) once it has ended.
 */

/** Outputs larger than this (as pretty JSON) are folded in a <details>. */
const foldOver = 2048

export interface DetailHooks {
  /** The Close button. */
  close (): void
  /** The task was deleted. */
  deleted (uuid: string): void
}

export interface TaskDetail {
  /** The uuid shown, if any. */
  readonly uuid: string | undefined
  /** Shows a task (its record if already fetched), and follows it while it is live. */
  open (uuid: string, known?: TaskState): Promise<void>
  close (): void
  tick (now: number): void
}

export function createDetail (live: Live, hooks: DetailHooks): TaskDetail {
  const section = byId('detail')
  const heading = h('h2', { tabindex: -1 })
  const status = h('span', { class: 'badge' })
  const progress = progressView()
  const fields = new Map<string, HTMLElement>()
  const error = h('div', { class: 'task-error', hidden: true })
  const cancel = h('button', { type: 'button' }, 'Cancel')
  const remove = h('button', { type: 'button', class: 'danger' }, 'Delete')
  const yes = h('button', { type: 'button', class: 'danger' }, 'Confirm delete')
  const no = h('button', { type: 'button' }, 'Keep')
  const confirm = h('span', { class: 'confirm', hidden: true }, h('span', null, 'Delete this task for good?'), yes, no)
  const dropped = h('p', { class: 'note', hidden: true })
  const messages = h('ol', { 'aria-label': 'Messages', class: 'messages', tabindex: 0 })
  const outputs = h('div', { class: 'outputs' })
  const close = h('button', { type: 'button', class: 'quiet' }, 'Close')
  const field = (name: string): HTMLElement => {
    const value = h('dd')
    fields.set(name, value)
    return h('div', null, h('dt', null, name), value)
  }
  section.append(
    h('div', { class: 'detail-head' }, heading, status, close),
    progress.element,
    h('dl', { class: 'facts' }, field('Uuid'), field('Task'), field('Attempt'), field('Created'), field('Started'), field('Finished'), field('Duration')),
    error,
    h('div', { class: 'actions' }, cancel, remove, confirm),
    h('h3', null, 'Messages'), dropped, messages,
    h('h3', null, 'Outputs'), outputs)

  /** Messages shown so far, as `messagesDropped + messages.length`, and the drop count then. */
  let shown = { total: 0, dropped: 0 }
  let outputsShown = ''
  let uuid: string | undefined
  let task: TaskState | undefined
  let stop: (() => void) | undefined
  let opens = 0

  const set = (name: string, value: string): void => {
    const element = fields.get(name)
    if (element !== undefined) text(element, value)
  }

  const missing = (message: string): void => {
    section.classList.add('missing')
    heading.textContent = message
  }

  const show = (record: TaskState, change: Change): void => {
    task = record
    text(heading, record.task)
    setBadge(status, record.status)
    set('Uuid', record.uuid)
    set('Task', record.task)
    set('Attempt', String(record.attempt))
    set('Created', fullTime(record.created))
    set('Started', fullTime(record.started))
    set('Finished', fullTime(record.finished))
    view.tick(Date.now())
    cancel.disabled = !isLive(record.status)
    remove.disabled = !isFinal(record.status)
    if (change === 'message') append(record)
    else if (change !== 'progress') {
      showMessages(record)
      showError(record)
      showOutputs(record)
    }
  }

  // Frames are drawn once per animation frame, whatever their rate: a task that sends a
  // hundred messages a second costs one layout a frame, not one a message.
  let pending: { record: TaskState, change: Change, opened: number } | undefined
  const later = (record: TaskState, change: Change): void => {
    // What the frames since the last drawing changed: a message or more, or more than that.
    const before = pending?.change
    const merged: Change = before === undefined || before === change || change === 'snapshot' || change === 'status'
      ? change
      : before === 'progress' ? change : change === 'progress' ? before : 'status'
    const first = pending === undefined
    pending = { record, change: merged, opened: opens }
    if (first) {
      requestAnimationFrame(() => {
        const drawing = pending
        pending = undefined
        if (drawing !== undefined && drawing.opened === opens) show(drawing.record, drawing.change)
      })
    }
  }

  const showError = (record: TaskState): void => {
    const retrying = record.status === 'pending' && record.error !== null
    error.hidden = record.error === null
    error.replaceChildren(
      h('h3', null, retrying ? `Attempt ${record.attempt} failed; a retry waits` : 'Error'),
      h('p', null, record.error ?? ''))
  }

  const showDropped = (record: TaskState): void => {
    dropped.hidden = record.messagesDropped === 0
    text(dropped, `${record.messagesDropped} earlier ${record.messagesDropped === 1 ? 'message' : 'messages'} dropped`)
    if (messages.childElementCount > 0) delete messages.dataset['empty']
    else messages.dataset['empty'] = 'No messages yet.'
  }

  const showMessages = (record: TaskState): void => {
    const total = record.messagesDropped + record.messages.length
    if (record.messagesDropped === shown.dropped && total >= shown.total) {
      append(record)
      return
    }
    messages.replaceChildren(...record.messages.map(message => h('li', null, message)))
    shown = { total, dropped: record.messagesDropped }
    showDropped(record)
  }

  /** Appends the messages not shown yet, keeping the list scrolled to the bottom if it was. */
  const append = (record: TaskState): void => {
    const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 4
    const total = record.messagesDropped + record.messages.length
    const fresh = record.messages.slice(Math.max(0, record.messages.length - (total - shown.total)))
    messages.append(...fresh.map(message => h('li', null, message)))
    // The page keeps what the server keeps: the newest 1000.
    while (messages.childElementCount > record.messages.length) messages.firstElementChild?.remove()
    shown = { total, dropped: record.messagesDropped }
    showDropped(record)
    if (atBottom) messages.scrollTop = messages.scrollHeight
  }

  const showOutputs = (record: TaskState): void => {
    const json = JSON.stringify(record.outputs, null, 2)
    const key = `${record.status}:${json}`
    if (key === outputsShown) return
    outputsShown = key
    if (record.status !== 'succeeded' && json === '{}') {
      outputs.replaceChildren(h('p', { class: 'note' }, isFinal(record.status) ? 'No outputs.' : 'No outputs yet.'))
      return
    }
    const pre = h('pre', { tabindex: 0 }, json)
    const bytes = new TextEncoder().encode(json).length
    outputs.replaceChildren(bytes > foldOver ? h('details', null, h('summary', null, `Outputs (${size(bytes)})`), pre) : pre)
  }

  const confirming = (on: boolean): void => {
    confirm.hidden = !on
    remove.hidden = on
    if (on) yes.focus()
  }

  const view: TaskDetail = {
    get uuid () {
      return uuid
    },
    async open (wanted, known) {
      if (wanted === uuid) return
      view.close()
      const current = ++opens
      uuid = wanted
      section.hidden = false
      heading.textContent = 'Loading…'
      heading.focus()
      let record = known
      if (record === undefined) {
        if (!isUuid(wanted)) {
          missing('No task with this uuid')
          return
        }
        section.setAttribute('aria-busy', 'true')
        try {
          record = await client.get(wanted)
        } catch (err) {
          if (current !== opens) return
          if (err instanceof TaskApiError && err.statusCode === 404) missing('No task with this uuid')
          else {
            missing('This task could not be loaded')
            report(err)
          }
          return
        } finally {
          if (current === opens) section.removeAttribute('aria-busy')
        }
        if (current !== opens) return
      }
      show(record, 'snapshot')
      if (isLive(record.status)) {
        stop = live.follow(wanted, {
          update: later,
          gone: message => report(new Error(message)),
        })
      }
    },
    close () {
      opens++
      stop?.()
      stop = undefined
      uuid = undefined
      task = undefined
      section.hidden = true
      section.classList.remove('missing')
      section.removeAttribute('aria-busy')
      confirming(false)
      messages.replaceChildren()
      shown = { total: 0, dropped: 0 }
      outputsShown = ''
    },
    tick (now) {
      if (task === undefined) return
      progress.update(task, now)
      set('Duration', elapsed(task, now))
    },
  }

  close.addEventListener('click', () => hooks.close())
  cancel.addEventListener('click', () => {
    const current = uuid
    if (current === undefined) return
    cancel.disabled = true
    client.cancel(current).then((record) => {
      live.offer(record)
      if (uuid === current && stop === undefined) show(record, 'snapshot')
    }, (err: unknown) => {
      report(err)
      if (task !== undefined) cancel.disabled = !isLive(task.status)
    })
  })
  remove.addEventListener('click', () => confirming(true))
  no.addEventListener('click', () => {
    confirming(false)
    remove.focus()
  })
  yes.addEventListener('click', () => {
    const current = uuid
    if (current === undefined) return
    client.delete(current).then(() => hooks.deleted(current), (err: unknown) => {
      confirming(false)
      report(err)
    })
  })
  return view
}
