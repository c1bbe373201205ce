import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { Access, redactedRequest } from './access.js'
import { closeSocket, Heartbeat, sseChannel, StreamCounter, whenGone, wsChannel, type Channel } from './channel.js'
import {
  FST_TASK_API_EVENTS_INTERRUPTED,
  FST_TASK_API_STREAM_LIMIT,
  FST_TASK_API_STREAM_NOT_ACCEPTABLE,
  FST_TASK_API_STREAM_UPGRADE_REQUIRED,
  FST_TASK_API_TASK_NOT_FOUND,
} from './errors.js'
import { isFinalEvent, type CreatedNotice, type ProgressEvent, type TaskEvent } from './events.js'
import { Pace } from './pace.js'
import { documented, errorResponses, stringifyCompiler } from './openapi.js'
import { docOnce, paths } from './routes.js'
import type { TaskService } from './service.js'
import { finalStatuses, type TaskState } from './store/types.js'

/*
 * Live events to clients: one task per WebSocket, many tasks per WebSocket, or
 * Server-Sent Events. Every transport goes through a Subscription, which owns the
 * guarantees: snapshot first, nothing lost or duplicated between snapshot and live
 * frames, progress coalesced per subscriber, messages and status never dropped, slow
 * clients bounded. Every byte the server sends a client goes through its Channel
 * (channel.ts), which cuts the client once its send buffer is past the hard limit.
 */

/** Options of the event streams (the plugin's `streams` option). */
export interface StreamOptions {
  /**
   * Most tasks one multiplexed socket (`GET /tasks/events`) may follow at once.
   * @default 100
   */
  maxSubscriptions?: number
  /**
   * Milliseconds between WebSocket pings (and SSE comment lines); a socket that has not
   * answered the previous ping is closed. 0 turns the heartbeat off.
   * @default 30000
   */
  heartbeatInterval?: number
  /**
   * Bytes waiting in a client's send buffer past which it only gets the latest progress.
   * @default 65536
   */
  softBufferLimit?: number
  /**
   * Bytes waiting in a client's send buffer past which it is disconnected (WebSocket
   * close 1013, SSE stream ended), whatever the server was sending it: events,
   * snapshots, error frames, pings.
   * @default 1048576
   */
  hardBufferLimit?: number
  /**
   * Largest frame a client may send, in bytes. Applies when the plugin registers
   * @fastify/websocket itself.
   * @default 4096
   */
  maxPayload?: number
  /**
   * Events kept per followed task so that reconnecting clients (SSE `Last-Event-ID`,
   * WebSocket `?since=`) get exactly what they missed.
   * @default 512
   */
  historySize?: number
  /**
   * How long a finished task's recent events stay available for reconnecting clients, in ms.
   * @default 60000
   */
  historyTtl?: number
  /**
   * Open streams (WebSockets on either event route, SSE responses) per owner: the `owner`
   * option's answer, or the client's IP when there is none. Past it a new stream is
   * refused with 429 FST_TASK_API_STREAM_LIMIT before it opens. 0: no cap.
   * @default 100
   */
  maxStreamsPerOwner?: number
}

export type NormalizedStreamOptions = Required<StreamOptions>

export const streamDefaults: NormalizedStreamOptions = {
  maxSubscriptions: 100,
  heartbeatInterval: 30_000,
  softBufferLimit: 64 * 1024,
  hardBufferLimit: 1024 * 1024,
  maxPayload: 4096,
  historySize: 512,
  historyTtl: 60_000,
  maxStreamsPerOwner: 100,
}

/** Where a subscription writes. One per transport. */
interface Sink {
  /** false: the client is gone or was cut; the subscription stops. */
  snapshot (seq: number, task: TaskState): boolean
  send (event: TaskEvent): boolean
  /** Bytes written but not yet sent to the client. */
  readonly buffered: number
  /** Writes a frame that is not an event (no seq): the notice that events are interrupted. */
  notice (frame: string): boolean
  /** The task ended: its final status went out; or, `failed`, the stream cannot go on. */
  end (failed?: boolean): void
}

const interrupted = new FST_TASK_API_EVENTS_INTERRUPTED()
const interruptedFrame = (uuid: string): string =>
  JSON.stringify({ type: 'error', uuid, code: interrupted.code, message: interrupted.message })

// Each event is serialized once, whatever the number of subscribers: the same bytes go to all.
const wsFrames = new WeakMap<TaskEvent, Buffer>()
const sseFrames = new WeakMap<TaskEvent, Buffer>()

function wsFrame (event: TaskEvent): Buffer {
  let frame = wsFrames.get(event)
  if (frame === undefined) {
    frame = Buffer.from(JSON.stringify(event))
    wsFrames.set(event, frame)
  }
  return frame
}

function sseFrame (event: TaskEvent): Buffer {
  let frame = sseFrames.get(event)
  if (frame === undefined) {
    frame = Buffer.from(`id: ${event.seq}\ndata: ${JSON.stringify(event)}\n\n`)
    sseFrames.set(event, frame)
  }
  return frame
}

// `uuid` at the top like every other frame (a multiplexed socket's client routes by it).
const snapshotJson = (seq: number, task: TaskState): string => JSON.stringify({ type: 'snapshot', uuid: task.uuid, seq, task })

interface SubscriptionOptions {
  progressInterval: number
  softBufferLimit: number
}

/** One client following one task. */
class Subscription {
  readonly #service: TaskService
  readonly #uuid: string
  readonly #sink: Sink
  readonly #options: SubscriptionOptions
  #buffer: TaskEvent[] | undefined = []
  #lastSeq = -1
  #pending: ProgressEvent | undefined
  readonly #pace: Pace
  #timer: NodeJS.Timeout | undefined
  #unsubscribe: (() => void) | undefined
  #stopped = false
  /** Reading what the client is missing, before going live for the first time. */
  #starting = true
  /**
   * Events from other servers are not arriving (the bus lost Redis): what does arrive is
   * held in #buffer, not sent, since events before it may be missing; `resync` sends.
   */
  #held: boolean
  /** The bus came back while this subscription was starting: it catches up once it has read. */
  #resyncDue = false

  constructor (service: TaskService, uuid: string, sink: Sink, options: SubscriptionOptions) {
    this.#service = service
    this.#uuid = uuid
    this.#sink = sink
    this.#options = options
    this.#pace = new Pace(options.progressInterval)
    this.#held = service.eventsInterrupted
  }

  /**
   * Subscribes, then sends what the client is missing: the events after `since` when the
   * server still holds them, else a snapshot. Resolves false when there is no such task.
   */
  async start (since?: number): Promise<boolean> {
    // Stopped before it started (the client unsubscribed or left during the access check):
    // it must not leave a listener behind.
    if (this.#stopped) return true
    // Subscribe first, then read: an event published meanwhile waits in #buffer and is
    // dropped if the snapshot already covers it (seq), so nothing is lost or doubled.
    this.#unsubscribe = this.#service.subscribe(this.#uuid, (event) => {
      if (this.#buffer !== undefined) this.#buffer.push(event)
      else this.#deliver(event)
    }, { history: true })
    await this.#service.keepHistory(this.#uuid)
    if (this.#stopped) return true
    if (since !== undefined) {
      const missed = await this.#service.eventsSince(this.#uuid, since)
      if (this.#stopped) return true
      if (missed !== undefined) {
        this.#lastSeq = since
        this.#goLive(missed.events)
        if (missed.ended && !this.#stopped) this.#finish()
        return true
      }
    }
    const snapshot = await this.#service.snapshot(this.#uuid)
    if (this.#stopped) return true
    if (snapshot === undefined) {
      this.stop()
      return false
    }
    if (!this.#sink.snapshot(snapshot.seq, snapshot.task)) {
      this.stop()
      return true
    }
    this.#lastSeq = snapshot.seq
    if (finalStatuses.has(snapshot.task.status)) {
      this.#finish()
      return true
    }
    this.#goLive([])
    return true
  }

  /** Stops following; idempotent. */
  stop (): void {
    if (this.#stopped) return
    this.#stopped = true
    this.#unsubscribe?.()
    clearTimeout(this.#timer)
    this.#pending = undefined
  }

  /**
   * Sends what was read (`first`), then what arrived meanwhile, and goes live. Not while
   * events are held (the bus lost Redis, or came back during the read): what arrived stays
   * held, since events before it may be missing, and `resync` reads on from the last seq sent.
   */
  #goLive (first: TaskEvent[]): void {
    for (const event of first) this.#deliver(event)
    this.#starting = false
    if (this.#held || this.#resyncDue) {
      if (!this.#held && !this.#stopped) void this.resync()
      return
    }
    const buffered = this.#buffer ?? []
    this.#buffer = undefined
    for (const event of buffered) this.#deliver(event)
  }

  /** Events from other servers stopped arriving: the client is told, and what arrives is held. */
  interrupted (): void {
    if (this.#stopped) return
    this.#held = true
    this.#buffer ??= []
    if (!this.#sink.notice(interruptedFrame(this.#uuid))) this.stop()
  }

  /**
   * Events arrive again, and those published meanwhile were missed: sends them from the
   * history, else a snapshot when the task changed, then goes on live. A subscription
   * still starting does it once it has read (what it read may predate the gap).
   */
  async resync (): Promise<void> {
    this.#held = false
    if (this.#stopped) return
    if (this.#starting) {
      this.#resyncDue = true
      return
    }
    this.#resyncDue = false
    this.#flushPending()
    this.#buffer ??= []
    try {
      const missed = await this.#service.eventsSince(this.#uuid, this.#lastSeq)
      if (this.#stopped) return
      if (missed !== undefined) {
        this.#goLive(missed.events)
        if (missed.ended && !this.#stopped) this.#finish()
        return
      }
      const snapshot = await this.#service.snapshot(this.#uuid)
      if (this.#stopped) return
      if (snapshot === undefined) {
        // Deleted meanwhile (only a finished task can be): nothing more will come.
        this.stop()
        this.#sink.end(true)
        return
      }
      if (snapshot.seq > this.#lastSeq) {
        if (!this.#sink.snapshot(snapshot.seq, snapshot.task)) {
          this.stop()
          return
        }
        this.#lastSeq = snapshot.seq
        if (finalStatuses.has(snapshot.task.status)) {
          this.#finish()
          return
        }
      }
      this.#goLive([])
    } catch {
      // Redis went away again: the client reconnects and resumes from what it has.
      this.stop()
      this.#sink.end(true)
    }
  }

  #deliver (event: TaskEvent): void {
    if (this.#stopped || event.seq <= this.#lastSeq) return
    if (event.type === 'progress') {
      const now = performance.now()
      const wait = this.#pace.wait(now)
      if (this.#pending === undefined && wait <= 0 && this.#sink.buffered <= this.#options.softBufferLimit) {
        this.#pace.sent(now)
        this.#emit(event)
      } else {
        // Coalesce: keep only the latest; it goes out when its turn comes (and the
        // client has drained its buffer), or before the next message or status.
        this.#pending = event
        this.#timer ??= setTimeout(this.#onTimer, Math.max(1, wait))
      }
      return
    }
    this.#flushPending()
    this.#emit(event)
    if (isFinalEvent(event)) this.#finish()
  }

  #onTimer = (): void => {
    this.#timer = undefined
    if (this.#pending === undefined || this.#stopped) return
    if (this.#sink.buffered > this.#options.softBufferLimit) {
      this.#timer = setTimeout(this.#onTimer, Math.max(1, this.#options.progressInterval))
      return
    }
    this.#flushPending()
  }

  #flushPending (): void {
    const pending = this.#pending
    if (pending === undefined) return
    this.#pending = undefined
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#pace.sent(performance.now())
    this.#emit(pending)
  }

  #emit (event: TaskEvent): void {
    if (this.#stopped) return
    this.#lastSeq = event.seq
    if (!this.#sink.send(event)) this.stop()
  }

  #finish (): void {
    this.stop()
    this.#sink.end()
  }
}

function parseSeq (value: unknown): number | undefined {
  if (typeof value !== 'string' || !/^\d{1,15}$/.test(value)) return undefined
  return Number(value)
}

function wsSink (channel: Channel, onEnd: (failed: boolean) => void): Sink {
  return {
    snapshot: (seq, task) => channel.write(snapshotJson(seq, task)),
    send: event => channel.write(wsFrame(event)),
    notice: frame => channel.write(frame),
    get buffered () { return channel.buffered },
    end: failed => onEnd(failed === true),
  }
}

type UuidRequest = FastifyRequest<{ Params: { uuid: string }, Querystring: { since?: string, token?: string } }>

/** What the plugin reads from the streams. */
export interface StreamStats {
  /** Streams open now: WebSockets on both event routes and SSE responses. */
  readonly open: number
}

/** The event routes: `GET {prefix}/:uuid/events` (WebSocket or SSE) and `GET {prefix}/events` (WebSocket). */
export function registerStreams (
  app: FastifyInstance,
  service: TaskService,
  access: Access,
  prefix: string,
  options: NormalizedStreamOptions & { progressInterval: number }
): StreamStats {
  const heartbeat = new Heartbeat(options.heartbeatInterval)
  const subscriptions = new Set<Subscription>()
  const eventStreams = new Set<ServerResponse>()
  const counter = new StreamCounter(options.maxStreamsPerOwner)
  // Whom a request's stream counts against, decided by the access check (SSE); the
  // count a WebSocket upgrade holds until its socket closes.
  const streamKeys = new WeakMap<FastifyRequest, string>()
  const upgrades = new WeakMap<FastifyRequest, () => void>()
  // An open SSE response would keep server.close() waiting: end them first. (WebSockets
  // are closed by @fastify/websocket's own preClose.)
  app.addHook('preClose', async () => {
    for (const stream of eventStreams) stream.end()
  })
  // Multiplexed sockets watching for new tasks: told when notices may be missed, and when
  // they arrive again (a `watching` frame: the time to read the list again).
  const watchers = new Set<{ lost (): void, restored (): void }>()
  const unwatchBus = service.watchBus({
    lost: () => {
      for (const subscription of subscriptions) subscription.interrupted()
      for (const watcher of watchers) watcher.lost()
    },
    restored: () => {
      for (const subscription of subscriptions) void subscription.resync()
      for (const watcher of watchers) watcher.restored()
    },
  })
  app.addHook('onClose', async () => {
    unwatchBus()
    heartbeat.stop()
    for (const subscription of subscriptions) subscription.stop()
  })
  const subscriptionOptions: SubscriptionOptions = {
    progressInterval: options.progressInterval,
    softBufferLimit: options.softBufferLimit,
  }
  const track = (subscription: Subscription): Subscription => {
    subscriptions.add(subscription)
    return subscription
  }
  const untrack = (subscription: Subscription): void => {
    subscription.stop()
    subscriptions.delete(subscription)
  }

  const streamKey = (request: FastifyRequest, owner: string | null): string =>
    owner !== null ? `owner:${owner}` : `ip:${request.ip}`

  const refuseOverCap = (): Error => new FST_TASK_API_STREAM_LIMIT(options.maxStreamsPerOwner)

  /** Counts an upgrade against its owner now, so that the 429 comes before the 101. */
  const holdUpgrade = (request: FastifyRequest, key: string): void => {
    const release = counter.acquire(key)
    if (release === undefined) throw refuseOverCap()
    // Released when the connection closes, whether the upgrade completes or not.
    // (app.injectWS's request has no socket: the WebSocket's close releases it.)
    const connection = request.raw.socket as Socket | undefined
    if (connection?.destroyed === true) release()
    else connection?.once('close', release)
    upgrades.set(request, release)
  }

  /** What every WebSocket gets once open: a channel, the heartbeat, and the release of its count on close. */
  const opened = (socket: WebSocket, request: FastifyRequest): Channel => {
    const channel = wsChannel(socket, options.hardBufferLimit, request.raw.socket as Socket | undefined)
    heartbeat.addSocket(socket, channel)
    const release = upgrades.get(request)
    if (release !== undefined) socket.once('close', release)
    return channel
  }

  // Everything is decided before the upgrade (or the SSE stream) opens, so a refusal is a
  // plain HTTP answer: 403 for a foreign origin, 401 without credentials, 404 for a task
  // that does not exist or is another owner's, 403 when authorize says no, 429 past the
  // owner's open streams.
  const mayFollow = async (request: UuidRequest, reply: FastifyReply): Promise<void> => {
    if (request.ws) {
      const refused = access.checkOrigin(request)
      if (refused !== undefined) throw refused
    }
    const { uuid } = request.params
    const token = request.query.token
    let owner: string | null = null
    if (token !== undefined) {
      // A token minted for this task stands in for the credentials a browser cannot send;
      // its stream counts against the task's owner.
      if (!access.verifyToken(uuid, token)) throw Access.invalidToken()
      const record = await service.record(uuid)
      if (record === undefined) throw new FST_TASK_API_TASK_NOT_FOUND(uuid)
      owner = record.owner
    } else {
      await access.authenticate(request, reply)
      const visible = await access.visible(request, uuid, await service.record(uuid))
      if (!visible.ok) throw visible.error
      // Visible to a scoped request means owned by it: the record's owner is the request's.
      if (access.scoped) owner = visible.record.owner
    }
    const key = streamKey(request, owner)
    if (request.ws) holdUpgrade(request, key)
    else streamKeys.set(request, key)
  }

  const mayConnect = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (request.ws) {
      const refused = access.checkOrigin(request)
      if (refused !== undefined) throw refused
    }
    const { token } = request.query as { token?: unknown }
    if (token !== undefined) {
      // A socket token stands in for the credentials a browser cannot put on a WebSocket:
      // the auth strategies, owner and authorize then read the headers it carries.
      const carried = access.openSocketToken(token)
      if (carried === undefined) throw Access.invalidToken()
      Object.assign(request.headers, carried)
    }
    await access.authenticate(request, reply)
    // An owner function that cannot answer for this request (it may expect credentials the
    // socket's subscribe frames bring as tokens) leaves the count to the client's IP.
    if (request.ws) holdUpgrade(request, streamKey(request, await access.ownerOf(request).catch(() => null)))
  }

  const oneTaskReply = Buffer.from(JSON.stringify({
    type: 'error',
    message: `this socket follows one task and takes no frames; use GET ${prefix}/events to subscribe`,
  }))

  const oneTask = (socket: WebSocket, request: UuidRequest): void => {
    const channel = opened(socket, request)
    const subscription = track(new Subscription(service, request.params.uuid, wsSink(channel, failed => failed ? closeSocket(socket, 1011, 'events interrupted') : closeSocket(socket, 1000, 'task finished')), subscriptionOptions))
    whenGone(socket, () => untrack(subscription))
    socket.on('message', () => {
      if (socket.readyState === socket.OPEN) channel.write(oneTaskReply)
    })
    subscription.start(parseSeq(request.query.since)).then((found) => {
      if (!found) closeSocket(socket, 1008, 'task not found')
    }, (err: unknown) => {
      request.log.error({ err }, 'fastify-task-api: event stream failed')
      closeSocket(socket, 1011, 'internal error')
    })
  }

  const sse = async (request: UuidRequest, reply: FastifyReply): Promise<void> => {
    const accept = request.headers.accept ?? '*/*'
    if (!/text\/event-stream|\*\/\*|text\/\*/.test(accept)) {
      throw new FST_TASK_API_STREAM_NOT_ACCEPTABLE()
    }
    if (request.method === 'HEAD') {
      // The headers a GET would get, and no stream: a HEAD holds no subscription.
      return reply.code(200)
        .header('content-type', 'text/event-stream; charset=utf-8')
        .header('cache-control', 'no-cache, no-transform')
        .send()
    }
    const lastId = request.headers['last-event-id']
    const since = parseSeq(Array.isArray(lastId) ? lastId[0] : lastId) ?? parseSeq(request.query.since)
    if (since !== undefined) {
      // An EventSource reconnects after every end of stream; a 204 tells it to stop once
      // it already has the final event.
      const state = await service.snapshot(request.params.uuid)
      if (state !== undefined && finalStatuses.has(state.task.status) && since >= state.seq) {
        return reply.code(204).send()
      }
    }
    const release = counter.acquire(streamKeys.get(request) ?? streamKey(request, null))
    if (release === undefined) throw refuseOverCap()
    const raw = reply.raw
    reply.hijack()
    if (raw.socket === null || raw.socket.destroyed) {
      // The client left during the access check.
      release()
      return
    }
    raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string | number | string[]>),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    })
    const channel = sseChannel(raw, options.hardBufferLimit)
    channel.write('retry: 2000\n\n')
    const forget = heartbeat.addStream(channel)
    eventStreams.add(raw)
    const subscription = track(new Subscription(service, request.params.uuid, {
      snapshot: (seq, task) => channel.write(`id: ${seq}\ndata: ${snapshotJson(seq, task)}\n\n`),
      send: event => channel.write(sseFrame(event)),
      notice: frame => channel.write(`data: ${frame}\n\n`),
      get buffered () { return channel.buffered },
      end: () => {
        forget()
        eventStreams.delete(raw)
        raw.end()
      },
    }, subscriptionOptions))
    // A client that vanished mid-write is not the server's problem.
    raw.on('error', (err) => request.log.debug({ err }, 'fastify-task-api: event stream write failed'))
    raw.on('close', () => {
      release()
      forget()
      eventStreams.delete(raw)
      untrack(subscription)
    })
    const found = await subscription.start(since)
    if (!found) raw.end()
  }

  const oneTaskPaths = paths(app, `${prefix}/:uuid/events`)
  for (const url of oneTaskPaths) {
    app.route<{ Params: { uuid: string }, Querystring: { since?: string, token?: string } }>({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      // For documents only (no validation, no serialization here).
      schema: documented({
        ...docOnce(url, oneTaskPaths),
        summary: 'Follow a task: a WebSocket (with an upgrade) or Server-Sent Events (Accept: text/event-stream)',
        response: {
          200: { description: 'Server-Sent Events: a snapshot frame, then the task\'s events, until it ends', content: { 'text/event-stream': { schema: { type: 'string' } } } },
          204: { description: 'the client already has every event of this finished task (Last-Event-ID)', type: 'null' },
          ...errorResponses(401, 403, 404, 429, 503),
        },
      }),
      serializerCompiler: stringifyCompiler,
      preHandler: mayFollow,
      handler: sse,
      wsHandler: oneTask,
    })
  }

  // The answers to malformed frames are few and fixed: each is made once, and a client
  // sending thousands of them gets the same bytes each time.
  const errorFrames = new Map<string, Buffer>()
  const errorFrame = (message: string): Buffer => {
    let frame = errorFrames.get(message)
    if (frame === undefined) {
      frame = Buffer.from(JSON.stringify({ type: 'error', message }))
      errorFrames.set(message, frame)
    }
    return frame
  }

  const watchingFrame = Buffer.from(JSON.stringify({ type: 'watching' }))
  const watchInterruptedFrame = Buffer.from(JSON.stringify({
    type: 'error',
    code: 'FST_TASK_API_EVENTS_INTERRUPTED',
    message: 'live events are interrupted: new tasks may be missed until a "watching" frame says they arrive again',
  }))
  /** A created frame, serialized once for every socket that receives it. */
  const createdFrames = new WeakMap<CreatedNotice, Buffer>()
  const createdFrame = (notice: CreatedNotice): Buffer => {
    let frame = createdFrames.get(notice)
    if (frame === undefined) {
      frame = Buffer.from(JSON.stringify({ type: 'created', uuid: notice.uuid, task: notice.summary }))
      createdFrames.set(notice, frame)
    }
    return frame
  }

  const manyTasks = (socket: WebSocket, request: FastifyRequest): void => {
    const channel = opened(socket, request)
    const following = new Map<string, Subscription>()
    const error = (message: string, uuid?: string): void => {
      channel.write(uuid === undefined ? errorFrame(message) : JSON.stringify({ type: 'error', uuid, message }))
    }
    /** Forgets a subscription, unless the client has already replaced it with another for the same task. */
    const drop = (uuid: string, subscription: Subscription): void => {
      untrack(subscription)
      if (following.get(uuid) === subscription) following.delete(uuid)
    }
    // Watching for new tasks: the bus's watcher, set while the socket watches.
    let watching: { stop: () => void } | undefined
    const unwatch = (): void => {
      watching?.stop()
      watching = undefined
    }
    const watch = (): void => {
      if (watching !== undefined) {
        error('already watching for new tasks')
        return
      }
      const bus = {
        lost: () => channel.write(watchInterruptedFrame),
        restored: () => channel.write(watchingFrame),
      }
      const current: { stop: () => void } = { stop: () => { watchers.delete(bus) } }
      watching = current
      // Whose tasks this socket may see: its owner's (read once), and those authorize lets it read.
      const owner = access.scoped ? access.ownerOf(request) : Promise.resolve(null)
      owner.then((owner) => {
        if (watching !== current) return
        watchers.add(bus)
        const stopNotices = service.watchCreated((notice) => {
          if (watching !== current || socket.readyState !== socket.OPEN) return
          if (access.scoped && notice.owner !== owner) return
          if (!access.authorizes) {
            channel.write(createdFrame(notice))
            return
          }
          service.record(notice.uuid)
            .then(async record => record !== undefined && await access.authorize(request, { action: 'read', task: record.task, inputs: record.inputs, record }))
            .then((allowed) => {
              if (allowed && watching === current && socket.readyState === socket.OPEN) channel.write(createdFrame(notice))
            }, () => {})
        })
        current.stop = () => {
          stopNotices()
          watchers.delete(bus)
        }
        channel.write(watchingFrame)
      }, (err: unknown) => {
        if (watching === current) watching = undefined
        request.log.error({ err }, 'fastify-task-api: the owner of a watching socket could not be found')
        error('cannot watch for new tasks: internal error')
      })
    }
    whenGone(socket, () => {
      for (const subscription of following.values()) untrack(subscription)
      following.clear()
      unwatch()
    })
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      // A socket being closed (cut for not reading, say) is owed no more answers.
      if (socket.readyState !== socket.OPEN) return
      if (isBinary || data.length > options.maxPayload) {
        error(`frames must be JSON text of at most ${options.maxPayload} bytes`)
        return
      }
      let frame: unknown
      try {
        frame = JSON.parse(data.toString('utf8'))
      } catch {
        error('frames must be JSON: {"type": "subscribe" | "unsubscribe", "uuid": "..."}')
        return
      }
      const { type, uuid, since, token } = (typeof frame === 'object' && frame !== null ? frame : {}) as Record<string, unknown>
      if (type === 'watch' || type === 'unwatch') {
        if (type === 'watch') watch()
        else unwatch()
        return
      }
      if (type !== 'subscribe' && type !== 'unsubscribe') {
        error('unknown frame type: expected {"type": "subscribe" | "unsubscribe", "uuid": "..."} or {"type": "watch" | "unwatch"}')
        return
      }
      if (typeof uuid !== 'string') {
        error(`${type} needs a "uuid" string`)
        return
      }
      if (type === 'unsubscribe') {
        const subscription = following.get(uuid)
        if (subscription !== undefined) drop(uuid, subscription)
        return
      }
      if (following.has(uuid)) {
        error('already subscribed to this task', uuid)
        return
      }
      if (following.size >= options.maxSubscriptions) {
        error(`too many subscriptions on this socket (at most ${options.maxSubscriptions})`, uuid)
        return
      }
      const subscription = track(new Subscription(service, uuid, wsSink(channel, (failed) => {
        drop(uuid, subscription)
        if (failed) error('live events are interrupted: subscribe again to catch up', uuid)
      }), subscriptionOptions))
      following.set(uuid, subscription)
      const notFound = `task ${uuid} not found`
      const refuse = (message: string): void => {
        drop(uuid, subscription)
        error(message, uuid)
      }
      // Another owner's task gets the very same error frame as a uuid that does not exist.
      const allowed = typeof token === 'string'
        ? Promise.resolve(access.verifyToken(uuid, token) ? undefined : 'the stream token is invalid or expired')
        : service.record(uuid).then(record => access.visible(request, uuid, record)).then(visible =>
          visible.ok ? undefined : (visible.error as Error & { statusCode?: number }).statusCode === 404 ? notFound : 'not allowed')
      allowed.then(async (refusal) => {
        // Unsubscribed, or the socket closed, while the check ran: nothing to start or answer.
        if (following.get(uuid) !== subscription) return
        if (refusal !== undefined) {
          refuse(refusal)
          return
        }
        const found = await subscription.start(typeof since === 'number' && Number.isInteger(since) && since >= 0 ? since : undefined)
        if (!found && following.get(uuid) === subscription) refuse(notFound)
      }).catch((err: unknown) => {
        drop(uuid, subscription)
        if ((err as { storeUnavailable?: unknown }).storeUnavailable === true) {
          // The store is away for now (Redis down): the client may subscribe again.
          channel.write(JSON.stringify({ type: 'error', uuid, code: 'FST_TASK_API_STORE_UNAVAILABLE', message: 'the task store cannot be reached right now: subscribe again' }))
          return
        }
        request.log.error({ err }, 'fastify-task-api: event stream failed')
        error('internal error', uuid)
      })
    })
  }

  const manyPaths = paths(app, `${prefix}/events`)
  for (const url of manyPaths) {
    app.route({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, manyPaths),
        summary: 'Follow many tasks over one WebSocket (subscribe and unsubscribe frames); needs an upgrade',
        response: errorResponses(401, 403, 426, 429, 503),
      }),
      serializerCompiler: stringifyCompiler,
      preHandler: mayConnect,
      handler: async () => { throw new FST_TASK_API_STREAM_UPGRADE_REQUIRED() },
      wsHandler: manyTasks,
    })
  }

  const tokenPaths = paths(app, `${prefix}/events/token`)
  for (const url of tokenPaths) {
    app.route({
      method: 'GET',
      url,
      logSerializers: { req: redactedRequest },
      schema: documented({
        ...docOnce(url, tokenPaths),
        summary: 'A short-lived token that opens the multiplexed socket (?token= on GET /events) with this request\'s credentials',
        response: {
          200: { description: 'the token', type: 'object', required: ['token', 'expires'], properties: { token: { type: 'string' }, expires: { type: 'string', format: 'date-time' } } },
          ...errorResponses(401, 431, 500, 503),
        },
      }),
      serializerCompiler: stringifyCompiler,
      preHandler: access.authenticate,
      handler: async (request, reply) => {
        void reply.header('cache-control', 'no-store')
        return access.socketToken(request)
      },
    })
  }

  return { get open () { return counter.total } }
}
