import { Type, type Static } from '@sinclair/typebox'
import { finalStatuses, statuses, type TaskState, type TaskStatus, type TaskSummary } from './store/types.js'

/*
 * The events a task emits, as clients receive them. Each carries the task's `seq`,
 * strictly increasing per task, so a client can tell that nothing was lost.
 */

// Nullable fields use `type: [T, 'null']` rather than a Union: fast-json-stringify
// serializes a multi-type field directly, but runs a validator per value for anyOf.
const nullable = <T>(type: 'number' | 'string') => Type.Unsafe<T | null>({ type: [type, 'null'] })

export const TaskStatusSchema = Type.Unsafe<TaskStatus>({ type: 'string', enum: [...statuses] })

export const TaskStateSchema = Type.Object({
  uuid: Type.String(),
  task: Type.String(),
  status: TaskStatusSchema,
  progress: nullable<number>('number'),
  target: nullable<number>('number'),
  outputs: Type.Unsafe<Record<string, unknown>>({ type: 'object', additionalProperties: true }),
  messages: Type.Array(Type.String()),
  messagesDropped: Type.Integer(),
  attempt: Type.Integer(),
  created: Type.String(),
  started: nullable<string>('string'),
  finished: nullable<string>('string'),
  error: nullable<string>('string'),
})

export const ProgressEventSchema = Type.Object({
  type: Type.Literal('progress'),
  uuid: Type.String(),
  seq: Type.Integer(),
  progress: Type.Union([Type.Number(), Type.Null()]),
  target: Type.Union([Type.Number(), Type.Null()]),
})

export const MessageEventSchema = Type.Object({
  type: Type.Literal('message'),
  uuid: Type.String(),
  seq: Type.Integer(),
  message: Type.String(),
})

export const StatusEventSchema = Type.Object({
  type: Type.Literal('status'),
  uuid: Type.String(),
  seq: Type.Integer(),
  status: TaskStateSchema.properties.status,
  /** The whole record, on the event that ends the task and on the one that schedules a retry. */
  task: Type.Optional(TaskStateSchema),
})

export type ProgressEvent = Static<typeof ProgressEventSchema>
export type MessageEvent = Static<typeof MessageEventSchema>
export type StatusEvent = Static<typeof StatusEventSchema> & { task?: TaskState }
/** Any event a task emits. */
export type TaskEvent = ProgressEvent | MessageEvent | StatusEvent

/**
 * A task was created: what the bus tells the servers whose streams watch for new tasks
 * (the multiplexed socket's `watch`, which the dashboard uses). `owner` never leaves
 * the server; the client gets `summary`.
 */
export interface CreatedNotice {
  uuid: string
  owner: string | null
  summary: TaskSummary
}

/** A watcher of new tasks. */
export type CreatedListener = (notice: CreatedNotice) => void

/** A subscriber's callback. */
export type TaskListener = (event: TaskEvent) => void

/**
 * How much of one event's fan-out runs in one turn of the event loop: at most this many
 * listeners, and no more once this many ms have passed. A larger fan-out (the final status
 * to thousands of sockets) goes on in later turns, so it never blocks the server for long.
 */
export const fanOutSlice = { listeners: 256, ms: 2 }

/** One event on its way to the listeners the task had when it was published. */
interface Delivery {
  event: TaskEvent
  onError: (err: unknown) => void
  listeners: TaskListener[]
  next: number
}

/** One new task's notice on its way to the watchers there were when it was announced. */
interface Announcement {
  notice: CreatedNotice
  onError: (err: unknown) => void
  listeners: CreatedListener[]
  next: number
}

/** True for the event that ends a task: a final status, with the whole record. */
export const isFinalEvent = (event: TaskEvent): boolean =>
  event.type === 'status' && event.task !== undefined && finalStatuses.has(event.status)

/** What a bus tells the server that started it. */
export interface BusHooks {
  /** What a listener throws for events that came from elsewhere, or an event that cannot be read. */
  error: (err: unknown) => void
  /** The bus stopped receiving events from other servers (its connection is lost): some may be missed. */
  lost?: () => void
  /** It receives them again; what was published meanwhile did not arrive. */
  restored?: () => void
}

/** Recent events a bus across servers keeps itself, for clients that reconnect to any server. */
export interface BusHistory {
  /** Starts (or goes on) keeping the task's events. */
  watch (uuid: string): Promise<void>
  /** The events after `seq` when the history holds all of them, and whether the task has ended; else undefined. */
  since (uuid: string, seq: number): Promise<{ events: TaskEvent[], ended: boolean } | undefined>
  /** Drops the task's events (its record was deleted). */
  forget (uuid: string): Promise<void>
}

/**
 * Carries a task's events from the server that publishes them to the subscribers: within
 * this process (`EventBus`), or across servers (`RedisBus`, fastify-task-api/redis).
 */
export interface TaskBus {
  /** Adds a listener for one task; returns the function that removes it. */
  subscribe (uuid: string, listener: TaskListener): () => void
  /**
   * Sends an event to the task's listeners, in publishing order per task. `onError`
   * receives what a listener throws (or, for a bus across servers, a failure to send).
   */
  publish (event: TaskEvent, onError: (err: unknown) => void): void
  /** True when somebody may listen to this task (a bus across servers cannot tell: always true). */
  has (uuid: string): boolean
  /** Listeners subscribed here, over all tasks. */
  readonly size: number
  /** Connects, and tells `hooks` what happens to it from then on. */
  start? (hooks: BusHooks): Promise<void>
  /** The bus's own history (across servers); without it the server keeps one in memory. */
  readonly history?: BusHistory | undefined
  /**
   * Tells the watchers of new tasks, on every server, that one was created (after its
   * record was). Best effort: a notice lost to a Redis outage is not sent again.
   */
  announce (notice: CreatedNotice, onError: (err: unknown) => void): void
  /** Adds a watcher of new tasks (created from then on, on any server); returns the function that removes it. */
  watch (listener: CreatedListener): () => void
  /** Disconnects. */
  close? (): Promise<void>
}

/**
 * Delivers a task's events to its subscribers, in this process. The listener set is
 * per task, so publishing costs nothing for tasks nobody watches. Each event goes to the
 * listeners subscribed when it was published (and still subscribed when their turn
 * comes), in slices (`fanOutSlice`); a task's next event waits until the previous one
 * reached all of them, so no listener ever sees a task's events out of order.
 */
export class EventBus implements TaskBus {
  readonly #listeners = new Map<string, Set<TaskListener>>()
  /** Per task, the events whose fan-out has not finished, oldest first. */
  readonly #backlog = new Map<string, Delivery[]>()
  readonly #watchers = new Set<CreatedListener>()
  #size = 0
  #scheduled = false

  /** Notices whose fan-out has not finished, oldest first. */
  readonly #notices: Announcement[] = []
  #announcing = false

  /**
   * Calls each watcher of new tasks, in the slices events are delivered in
   * (`fanOutSlice`): thousands of watchers and a burst of new tasks never hold the event
   * loop for long. Notices reach each watcher in the order they were announced.
   */
  announce (notice: CreatedNotice, onError: (err: unknown) => void): void {
    if (this.#watchers.size === 0) return
    this.#notices.push({ notice, onError, listeners: [...this.#watchers], next: 0 })
    if (!this.#announcing) this.#announce()
  }

  #announce = (): void => {
    this.#announcing = true
    const start = performance.now()
    let calls = 0
    while (this.#notices.length > 0) {
      const delivery = this.#notices[0] as Announcement
      while (delivery.next < delivery.listeners.length) {
        if (calls >= fanOutSlice.listeners || performance.now() - start >= fanOutSlice.ms) {
          setImmediate(this.#announce)
          return
        }
        const listener = delivery.listeners[delivery.next++] as CreatedListener
        // Gone meanwhile: no call after it stopped watching.
        if (!this.#watchers.has(listener)) continue
        calls++
        try {
          listener(delivery.notice)
        } catch (err) {
          delivery.onError(err)
        }
      }
      this.#notices.shift()
    }
    this.#announcing = false
  }

  watch (listener: CreatedListener): () => void {
    this.#watchers.add(listener)
    return () => { this.#watchers.delete(listener) }
  }

  /** Adds a listener for one task; returns the function that removes it. */
  subscribe (uuid: string, listener: TaskListener): () => void {
    let set = this.#listeners.get(uuid)
    if (set === undefined) {
      set = new Set()
      this.#listeners.set(uuid, set)
    }
    if (!set.has(listener)) {
      set.add(listener)
      this.#size++
    }
    return () => {
      const current = this.#listeners.get(uuid)
      if (current === undefined || !current.delete(listener)) return
      this.#size--
      if (current.size === 0) this.#listeners.delete(uuid)
    }
  }

  /**
   * Calls each listener of the event's task: at once when the fan-out is small and the
   * task has none pending, else partly now and the rest in later turns. A listener that
   * throws does not stop the others.
   */
  publish (event: TaskEvent, onError: (err: unknown) => void): void {
    const set = this.#listeners.get(event.uuid)
    if (set === undefined) return
    const delivery: Delivery = { event, onError, listeners: [...set], next: 0 }
    const backlog = this.#backlog.get(event.uuid)
    if (backlog !== undefined) {
      backlog.push(delivery)
      return
    }
    const fresh = [delivery]
    this.#backlog.set(event.uuid, fresh)
    if (!this.#work(event.uuid, fresh, { start: performance.now(), calls: 0 })) this.#schedule()
  }

  /** True when somebody listens to this task. */
  has (uuid: string): boolean {
    return this.#listeners.has(uuid)
  }

  /** Listeners subscribed, over all tasks. */
  get size (): number {
    return this.#size
  }

  /** Delivers a task's pending events until they are all out (true) or the slice is spent (false). */
  #work (uuid: string, backlog: Delivery[], slice: { start: number, calls: number }): boolean {
    while (backlog.length > 0) {
      const delivery = backlog[0] as Delivery
      while (delivery.next < delivery.listeners.length) {
        if (slice.calls >= fanOutSlice.listeners || performance.now() - slice.start >= fanOutSlice.ms) return false
        const listener = delivery.listeners[delivery.next++] as TaskListener
        // Unsubscribed meanwhile: no call after its unsubscribe.
        if (this.#listeners.get(uuid)?.has(listener) !== true) continue
        slice.calls++
        try {
          listener(delivery.event)
        } catch (err) {
          delivery.onError(err)
        }
      }
      backlog.shift()
    }
    this.#backlog.delete(uuid)
    return true
  }

  #schedule (): void {
    if (this.#scheduled) return
    this.#scheduled = true
    setImmediate(this.#drain)
  }

  #drain = (): void => {
    this.#scheduled = false
    const slice = { start: performance.now(), calls: 0 }
    for (const [uuid, backlog] of this.#backlog) {
      if (!this.#work(uuid, backlog, slice)) {
        // This task goes last next turn, so that one large fan-out does not hold back the others.
        this.#backlog.delete(uuid)
        this.#backlog.set(uuid, backlog)
        break
      }
    }
    if (this.#backlog.size > 0) this.#schedule()
  }
}

/**
 * Recent events of the tasks somebody has followed, so that a client that reconnects
 * (SSE's Last-Event-ID, a WebSocket's `since`) gets exactly what it missed. Recording
 * starts at the first subscription and ends `ttl` ms after the task's final event;
 * each task keeps its last `size` events. Tasks nobody follows cost nothing.
 */
export class EventHistory {
  readonly #tasks = new Map<string, { from: number, events: TaskEvent[], timer?: NodeJS.Timeout }>()
  readonly #size: number
  readonly #ttl: number

  constructor (size: number, ttl: number) {
    this.#size = size
    this.#ttl = ttl
  }

  /** Starts recording a live task whose last published seq is `seq`. */
  watch (uuid: string, seq: number): void {
    if (this.#size > 0 && !this.#tasks.has(uuid)) this.#tasks.set(uuid, { from: seq + 1, events: [] })
  }

  isWatched (uuid: string): boolean {
    return this.#tasks.has(uuid)
  }

  record (event: TaskEvent): void {
    const entry = this.#tasks.get(event.uuid)
    if (entry === undefined) return
    entry.events.push(event)
    if (entry.events.length > this.#size * 2) {
      entry.events = entry.events.slice(-this.#size)
      entry.from = (entry.events[0] as TaskEvent).seq
    }
    if (isFinalEvent(event) && entry.timer === undefined) {
      entry.timer = setTimeout(() => this.#tasks.delete(event.uuid), this.#ttl).unref()
    }
  }

  /**
   * The events after `seq`, oldest first, when the history still holds all of them, and
   * whether the task has ended; undefined when it cannot tell (never watched, expired,
   * or trimmed past `seq`).
   */
  since (uuid: string, seq: number): { events: TaskEvent[], ended: boolean } | undefined {
    const entry = this.#tasks.get(uuid)
    if (entry === undefined || seq + 1 < entry.from) return undefined
    const last = entry.events.at(-1)
    if (seq > (last?.seq ?? entry.from - 1)) return undefined
    return { events: entry.events.filter(event => event.seq > seq), ended: entry.timer !== undefined }
  }

  /** Drops a task's events (its record was deleted): a resume then finds nothing. */
  forget (uuid: string): void {
    clearTimeout(this.#tasks.get(uuid)?.timer)
    this.#tasks.delete(uuid)
  }

  clear (): void {
    for (const entry of this.#tasks.values()) clearTimeout(entry.timer)
    this.#tasks.clear()
  }
}
