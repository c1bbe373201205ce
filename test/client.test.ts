import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import { EventSource } from 'eventsource'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { MemoryStore, type TaskApiOptions } from '../dist/index.js'
import TaskAPI, { createClient, TaskApiError, TaskRunError, type ClientOptions, type Frame, type TaskState } from '../dist/client/index.js'
import { build, fixture, until } from './helpers.js'

/*
 * The client against a real server on a real port: real WebSockets (`ws`), real SSE
 * (the `eventsource` package: Node 20 has no EventSource) and real polling.
 */

interface Server {
  app: FastifyInstance
  /** The base URL of the task API. */
  base: string
  /** Requests as the HTTP server saw them: `GET /tasks/…` or `UPGRADE /tasks/…/events?since=…`. */
  seen: string[]
  /** The server side of each WebSocket upgrade, to drop them. */
  upgrades: Socket[]
}

async function serve (t: Test, options: Partial<TaskApiOptions> = {}): Promise<Server> {
  const app = await build(t, { tasks: [fixture('stream.ts'), fixture('basic.ts'), fixture('control.ts')], concurrency: 2, ...options })
  const seen: string[] = []
  const upgrades: Socket[] = []
  app.server.on('request', (request) => seen.push(`${request.method} ${request.url}`))
  app.server.on('upgrade', (request, socket: Socket) => {
    seen.push(`UPGRADE ${request.url}`)
    upgrades.push(socket)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  return { app, base: `http://127.0.0.1:${port}${options.prefix ?? '/tasks'}`, seen, upgrades }
}

/**
 * A WebSocket opened as a page of another site opens it (its upgrade carries that Origin),
 * so the server refuses it (403) while the client's REST calls stay same-origin.
 */
class ForeignWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[], options: WebSocket.ClientOptions = {}) {
    super(url, protocols, { ...options, headers: { ...options.headers, origin: 'https://elsewhere.example' } })
  }
}

/** What a run reported through its callbacks. */
function recorder () {
  const seen = { progress: [] as Array<[number | null, number | null]>, messages: [] as string[], statuses: [] as string[], seqs: [] as number[] }
  return {
    seen,
    handlers: {
      onProgress: (progress: number | null, target: number | null) => { seen.progress.push([progress, target]) },
      onMessage: (message: string) => { seen.messages.push(message) },
      onStatus: (status: string) => { seen.statuses.push(status) },
      onEvent: (frame: Frame) => { seen.seqs.push(frame.seq) },
    },
  }
}

const steps = (n: number): string[] => Array.from({ length: n }, (_, i) => `step ${i + 1}`)
const increasing = (numbers: number[]): boolean => numbers.every((n, i) => i === 0 || n > (numbers[i - 1] as number))

t.test('run follows a task over a WebSocket and resolves with its outputs', async (t) => {
  const { base, seen } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const { seen: got, handlers } = recorder()
  const frames: Frame[] = []
  // (onEvent is a subscribe handler; run passes its options on to subscribe.)
  const options = { ...handlers, onEvent: (frame: Frame) => { frames.push(structuredClone(frame)); handlers.onEvent(frame) } }
  const outputs = await client.run('steps', { steps: 5, delay: 20 }, options)
  t.same(outputs, { done: 5 })
  t.same(got.messages, steps(5), 'every message once, in order')
  // What the callbacks told follows from the frames the client got: the snapshot's
  // state first, then each change as it came (the task may have started, or even ended,
  // before the socket opened).
  const [snapshot, ...rest] = frames
  if (snapshot?.type !== 'snapshot') throw new Error('the first frame is not the snapshot')
  const progressed = rest.flatMap(frame => frame.type === 'progress' ? [[frame.progress, frame.target] as [number | null, number | null]] : [])
  t.same(got.progress, [[snapshot.task.progress, snapshot.task.target], ...progressed], 'the snapshot\'s progress, then each progress frame\'s')
  t.same(got.progress.at(-1), [5, 5], 'the final progress arrives')
  const statuses = [snapshot.task.status, ...rest.flatMap(frame => frame.type === 'status' ? [frame.status] : [])]
  t.same(got.statuses, statuses.filter((status, i) => status !== statuses[i - 1]), 'the snapshot\'s status, then each change')
  const lifecycle = ['pending', 'running', 'succeeded']
  t.same(got.statuses, lifecycle.slice(lifecycle.length - got.statuses.length), 'in lifecycle order, none skipped once followed')
  t.ok(seen.some(line => /^UPGRADE \/tasks\/[0-9a-f-]+\/events$/.test(line)), 'over a WebSocket')
  t.notOk(seen.some(line => /^GET \/tasks\/[0-9a-f-]+(\/events)?$/.test(line)), 'neither SSE nor polling')
})

t.test('run rejects with a TaskRunError carrying the record when the task fails', async (t) => {
  const { base } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const err = await client.run('raises', { message: 'boom' }).catch((err: unknown) => err)
  t.ok(err instanceof TaskRunError)
  const failed = err as TaskRunError
  t.equal(failed.message, 'task "raises" failed: boom')
  t.equal(failed.task.status, 'failed')
  t.equal(failed.task.error, 'boom')
  t.match(failed.task.uuid, /^[0-9a-f-]{36}$/)
})

t.test('run rejects with a TaskApiError naming the input the server refused, and creates nothing', async (t) => {
  const store = new MemoryStore()
  const { base } = await serve(t, { store })
  const client = createClient({ baseURL: base, WebSocket })
  const err = await client.run('steps', { steps: 'many' as unknown as number, delay: 1 }).catch((err: unknown) => err)
  t.ok(err instanceof TaskApiError)
  t.equal((err as TaskApiError).statusCode, 400)
  t.equal((err as TaskApiError).code, 'FST_TASK_API_INPUT_INVALID')
  t.equal((err as TaskApiError).message, 'inputs/steps must be integer')
  t.equal(store.size, 0, 'no record')
})

t.test('a task that fails and is retried is followed to its final status: pending after running is not an end', async (t) => {
  const { base } = await serve(t, { tasks: [fixture('retry.ts')] })
  const client = createClient({ baseURL: base, WebSocket })
  const { seen: got, handlers } = recorder()
  let last: TaskState | undefined
  const outputs = await client.run('flaky', { failures: 2 }, { ...handlers, onUpdate: (task) => { last = task } })
  t.same(outputs, { attempt: 3 }, 'resolved with the third attempt, not ended by the failed ones')
  t.equal(got.statuses.at(-1), 'succeeded')
  t.notOk(got.statuses.includes('failed'), 'a failure with retries left is no status of its own')
  t.same(got.messages, ['attempt 1', 'attempt 2', 'attempt 3'], 'every attempt\'s message once')
  t.equal((last as TaskState & { attempt?: number }).attempt, 3)
  t.ok(increasing(got.seqs))
})

t.test('aborting the signal cancels the task; run rejects with the cancelled record', async (t) => {
  const { app, base, seen } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const controller = new AbortController()
  const statuses: string[] = []
  const err = await client.run('cooperative', {}, {
    signal: controller.signal,
    onStatus: (status) => {
      statuses.push(status)
      if (status === 'running') controller.abort()
    },
  }).catch((err: unknown) => err)
  t.ok(err instanceof TaskRunError)
  const { task } = err as TaskRunError
  t.equal(task.status, 'cancelled')
  t.equal((err as Error).message, 'task "cooperative" was cancelled')
  // The first snapshot says pending when it reached the client before a child took the task.
  t.same(statuses[0] === 'pending' ? statuses.slice(1) : statuses, ['running', 'cancelled'], 'running, then cancelled (after pending if the snapshot came first)')
  t.ok(seen.includes(`POST /tasks/${task.uuid}/cancel`), 'the abort sent POST /tasks/:uuid/cancel')
  t.equal((await app.tasks.get(task.uuid))?.status, 'cancelled')
})

t.test('a refused cancel rejects run, and the client stops following the task (no handler call after)', async (t) => {
  const { app, base } = await serve(t, { authorize: (_request, { action }) => action !== 'cancel' })
  const client = createClient({ baseURL: base, WebSocket })
  const controller = new AbortController()
  let after = 0
  let rejected = false
  const err = await client.run('steps', { steps: 6, delay: 60 }, {
    signal: controller.signal,
    onUpdate: () => { if (rejected) after++ },
    onStatus: (status) => { if (status === 'running') controller.abort() },
  }).catch((err: unknown) => err)
  rejected = true
  t.match(err, { name: 'TaskApiError', statusCode: 403, code: 'FST_TASK_API_FORBIDDEN' })
  const task = (await app.tasks.list({ limit: 1 })).tasks[0]!
  await app.tasks.wait(task.uuid)
  await new Promise(resolve => setTimeout(resolve, 100))
  t.equal(after, 0, 'no update reached the handlers after run rejected')
  t.equal(app.tasks.stats().streams, 0, 'and its stream was closed')
})

t.test('a signal aborted before run submits nothing', async (t) => {
  const { base, seen } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const err = await client.run('steps', { steps: 1, delay: 1 }, { signal: AbortSignal.abort(new Error('changed my mind')) }).catch((err: unknown) => err)
  t.equal((err as Error).message, 'changed my mind')
  t.same(seen, [])
})

t.test('submit, get, cancel and subscribe', async (t) => {
  const { base } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const submitted = await client.submit('cooperative')
  t.equal(submitted.status, 'pending')
  t.equal((await client.get(submitted.uuid)).uuid, submitted.uuid)
  const ended = new Promise<TaskState>((resolve, reject) => {
    client.subscribe(submitted.uuid, {
      onStatus: (status) => { if (status === 'running') client.cancel(submitted.uuid).catch(reject) },
      onEnd: resolve,
      onError: reject,
    })
  })
  t.equal((await ended).status, 'cancelled')
  const missing = await client.get('7d5b1a7e-0000-4000-8000-000000000000').catch((err: unknown) => err)
  t.ok(missing instanceof TaskApiError)
  t.equal((missing as TaskApiError).statusCode, 404)
  t.equal((missing as TaskApiError).code, 'FST_TASK_API_TASK_NOT_FOUND')
})

t.test('list pages through the caller\'s tasks with filters; delete removes a finished one and refuses a live one', async (t) => {
  const { app, base, seen } = await serve(t, { list: true })
  const client = createClient({ baseURL: base, WebSocket })
  const done: string[] = []
  for (let i = 0; i < 5; i++) {
    const { uuid } = await client.submit('hello', { name: `n${i}` })
    await app.tasks.wait(uuid)
    done.unshift(uuid)
  }
  const live = await client.submit('cooperative')
  const first = await client.list({ task: 'hello', limit: 2 })
  t.same(first.tasks.map(task => task.uuid), done.slice(0, 2), 'newest first, two per page')
  t.type(first.next, 'string')
  t.notOk('outputs' in (first.tasks[0] as object), 'summaries: no outputs')
  const rest = await client.list({ task: 'hello', limit: 2, cursor: first.next as string })
  t.same(rest.tasks.map(task => task.uuid), done.slice(2, 4), 'the next page from the cursor')
  t.same((await client.list({ status: 'pending' })).tasks.map(task => task.uuid).concat((await client.list({ status: 'running' })).tasks.map(task => task.uuid)), [live.uuid], 'filtered by status')
  t.same((await client.list()).tasks.length, 6, 'no query: every task')
  t.ok(seen.includes('GET /tasks?task=hello&limit=2'), 'the query goes in the URL\'s search')
  const bad = await client.list({ cursor: 'nonsense' }).catch((err: unknown) => err)
  t.equal((bad as TaskApiError).statusCode, 400)
  t.equal((bad as TaskApiError).code, 'FST_TASK_API_CURSOR_INVALID')

  t.equal(await client.delete(done[0] as string), undefined, 'resolves with nothing')
  t.equal(await app.tasks.get(done[0] as string), undefined, 'the record is gone')
  const again = await client.delete(done[0] as string).catch((err: unknown) => err)
  t.equal((again as TaskApiError).statusCode, 404)
  const refused = await client.delete(live.uuid).catch((err: unknown) => err)
  t.ok(refused instanceof TaskApiError)
  t.equal((refused as TaskApiError).statusCode, 409)
  t.equal((refused as TaskApiError).code, 'FST_TASK_API_TASK_LIVE')
  t.ok(await app.tasks.get(live.uuid), 'a live task stays')
  await client.cancel(live.uuid)
})

t.test('unsubscribing from one of a snapshot\'s callbacks stops the rest of that snapshot\'s calls', async (t) => {
  const { app, base } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const { uuid } = await client.submit('steps', { steps: 4, delay: 1 })
  await app.tasks.wait(uuid)
  // The snapshot of the finished task holds four messages, then its final status.
  const calls: string[] = []
  const unsubscribe = client.subscribe(uuid, {
    onMessage: (message) => {
      calls.push(message)
      unsubscribe()
    },
    onUpdate: () => calls.push('update'),
    onEnd: () => calls.push('end'),
  })
  // A frame is applied in one synchronous go: once its first call is made, all of them are.
  await until('the snapshot', () => calls.length > 0)
  await new Promise(resolve => setTimeout(resolve, 50))
  t.same(calls, ['step 1'], 'the first message, then nothing: no other message, no update, no end')
})

t.test('subscribe stops at unsubscribe: no callback after it, and the socket closes', async (t) => {
  const { base, app, upgrades } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const { uuid } = await client.submit('steps', { steps: 20, delay: 25 })
  let after = 0
  let stopped = false
  await new Promise<void>((resolve) => {
    const unsubscribe = client.subscribe(uuid, {
      onMessage: () => {
        if (stopped) after++
        else {
          stopped = true
          unsubscribe()
          resolve()
        }
      },
    })
  })
  // The socket closes long before the task ends (it would close at the end otherwise).
  await Promise.all(upgrades.map(socket => socket.destroyed ? undefined : once(socket, 'close')))
  t.equal((await app.tasks.get(uuid))?.status, 'running', 'the socket closed while the task still ran')
  await app.tasks.wait(uuid)
  t.equal(after, 0, 'nothing after unsubscribe')
})

t.test('a socket the server drops mid-task is reopened with ?since=: no frame lost, none duplicated', async (t) => {
  const { app, base, seen, upgrades } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket, retryDelay: 50 })
  const { seen: got, handlers } = recorder()
  let dropped = false
  const outputs = await client.run('steps', { steps: 20, delay: 30 }, {
    ...handlers,
    onMessage: (message, task) => {
      handlers.onMessage(message)
      if (message === 'step 3' && !dropped) {
        dropped = true
        for (const socket of upgrades) socket.destroy()
        t.comment(`dropped the socket after step 3 (task ${task.uuid})`)
      }
    },
  })
  t.same(outputs, { done: 20 })
  t.ok(dropped)
  const reconnects = seen.filter(line => /^UPGRADE .*\/events\?since=\d+$/.test(line))
  t.equal(reconnects.length, 1, `reconnected once, with since (${reconnects.join(', ')})`)
  t.same(got.messages, steps(20), 'every message exactly once, in order')
  t.ok(increasing(got.seqs), 'seq only grows across the reconnect')
  t.equal(new Set(got.seqs).size, got.seqs.length, 'no frame twice')
  const uuid = (reconnects[0] as string).split('/')[2] as string
  const final = await app.tasks.get(uuid)
  t.same(final?.messages, got.messages, 'the client saw what the record holds')
  t.same(got.progress.at(-1), [20, 20])
})

t.test('falls back to SSE when the WebSocket is refused', async (t) => {
  // The server only takes WebSockets from another origin: the upgrade answers 403.
  const { base, seen } = await serve(t, { allowedOrigins: ['https://app.example'] })
  const client = createClient({ baseURL: base, WebSocket: ForeignWebSocket, EventSource })
  const { seen: got, handlers } = recorder()
  const outputs = await client.run('steps', { steps: 4, delay: 20 }, handlers)
  t.same(outputs, { done: 4 })
  t.same(got.messages, steps(4))
  t.ok(increasing(got.seqs))
  const attempts = seen.filter(line => /\/events/.test(line))
  t.match(attempts[0], /^UPGRADE /, 'tried the WebSocket first')
  t.match(attempts[1], /^GET \/tasks\/[0-9a-f-]+\/events$/, 'then SSE')
  t.notOk(seen.some(line => /^GET \/tasks\/[0-9a-f-]+$/.test(line)), 'no polling')
})

t.test('an SSE stream that drops is reopened with ?since=: no frame lost, none duplicated', async (t) => {
  const { base, seen, app } = await serve(t)
  const client = createClient({ baseURL: base, EventSource, transports: ['sse', 'poll'], retryDelay: 50 })
  const { seen: got, handlers } = recorder()
  const streams: Socket[] = []
  app.server.on('request', (request) => { if (/\/events$/.test(request.url ?? '')) streams.push(request.socket) })
  let dropped = false
  const onMessage = (message: string): void => {
    handlers.onMessage(message)
    // The first event stream is cut mid-task, from the server's side.
    if (message === 'step 2' && !dropped) {
      dropped = true
      for (const socket of streams) socket.destroy()
    }
  }
  const outputs = await client.run('steps', { steps: 12, delay: 30 }, { ...handlers, onMessage })
  t.same(outputs, { done: 12 })
  t.ok(dropped)
  t.ok(seen.some(line => /^GET .*\/events\?since=\d+$/.test(line)), 'reconnected with since')
  t.same(got.messages, steps(12))
  t.ok(increasing(got.seqs))
})

t.test('falls back to polling without WebSocket or EventSource', async (t) => {
  const { base, seen } = await serve(t, { allowedOrigins: ['https://app.example'] })
  t.equal(typeof (globalThis as { EventSource?: unknown }).EventSource, 'undefined', 'Node 20 has no EventSource')
  const client = createClient({ baseURL: base, WebSocket: ForeignWebSocket, pollInterval: 20 })
  const { seen: got, handlers } = recorder()
  let updates = 0
  const outputs = await client.run('steps', { steps: 6, delay: 30 }, { ...handlers, onUpdate: () => { updates++ } })
  t.same(outputs, { done: 6 })
  t.same(got.messages, steps(6), 'every message once, from the polled records')
  t.same(got.seqs, [], 'polling has no frames')
  t.same(got.progress.at(-1), [6, 6])
  t.equal(got.statuses.at(-1), 'succeeded')
  const polls = seen.filter(line => /^GET \/tasks\/[0-9a-f-]+$/.test(line)).length
  t.ok(updates >= 2 && updates <= polls, `polled GET /tasks/:uuid (${polls} polls), an update for each that changed something (${updates})`)
  t.notOk(seen.some(line => /^GET .*\/events/.test(line)), 'no SSE without an EventSource')
})

t.test('subscribing to an unknown task ends in onError with the 404', async (t) => {
  const { base } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket, EventSource })
  const err = await new Promise<Error>((resolve, reject) => {
    client.subscribe('7d5b1a7e-0000-4000-8000-000000000000', { onError: resolve, onEnd: () => reject(new Error('ended')) })
  })
  t.ok(err instanceof TaskApiError)
  t.equal((err as TaskApiError).statusCode, 404)
})

t.test('with no transport left, following ends in onError naming those tried', async (t) => {
  const { app, base } = await serve(t, { allowedOrigins: ['https://app.example'] })
  const client = createClient({ baseURL: base, WebSocket: ForeignWebSocket, transports: ['websocket'] })
  const { uuid } = await client.submit('steps', { steps: 1, delay: 1 })
  const err = await new Promise<Error>((resolve, reject) => {
    client.subscribe(uuid, { onError: resolve, onEnd: () => reject(new Error('ended')) })
  })
  t.equal(err.message, `no transport could follow task ${uuid} (tried: websocket)`)
  await app.tasks.wait(uuid)
})

t.test('the seed\'s call shape: run(task, inputs, progressCallback, callback, errback)', async (t) => {
  const { base } = await serve(t)
  const client = createClient({ baseURL: base, WebSocket })
  const updates: TaskState[] = []
  let succeeded: TaskState | undefined
  const outputs = await client.run('hello', { name: 'World', count: 3 }, (json) => { updates.push(structuredClone(json)) }, (json) => { succeeded = json }, () => t.fail('no errback'))
  t.same(outputs, { output: 'Hello World' })
  t.equal(succeeded?.status, 'succeeded')
  t.same(succeeded?.outputs, { output: 'Hello World' })
  t.same(updates.at(-1), succeeded, 'the progress callback saw the final record last')
  t.same(updates.at(-1)?.outputs, { output: 'Hello World' })

  let failure: Error | undefined
  const failed = client.run('raises', {}, null, () => t.fail('no callback'), (err) => { failure = err })
  // With an errback the failure is handled there; the promise still rejects for those who await it.
  await t.rejects(failed, TaskRunError)
  t.ok(failure instanceof TaskRunError)
  t.equal((failure as TaskRunError).task.error, 'something went wrong')
})

t.test('the default export is django-task-api\'s TaskAPI: options.baseURL, resolves with the record', async (t) => {
  const { base } = await serve(t)
  TaskAPI.options.baseURL = `${base}/`
  t.teardown(() => { TaskAPI.options.baseURL = '/tasks' })
  const json = await TaskAPI.run('multi', {})
  t.equal(json.status, 'succeeded')
  t.same(json.outputs, { out: 'Foo', count: 5 })
  await t.rejects(TaskAPI.run('raises', { message: 'nope' }), { name: 'TaskRunError', message: 'task "raises" failed: nope' })
})

t.test('in Node, TaskAPI and createClient follow over a WebSocket given one (ws), not by polling', async (t) => {
  const { base, seen } = await serve(t)
  TaskAPI.options.baseURL = base
  TaskAPI.options.WebSocket = WebSocket as never
  t.teardown(() => { TaskAPI.options.baseURL = '/tasks'; delete TaskAPI.options.WebSocket })
  const json = await TaskAPI.run('steps', { steps: 3, delay: 20 })
  t.same(json.outputs, { done: 3 })
  t.ok(seen.some(line => line === `UPGRADE /tasks/${json.uuid}/events`), 'TaskAPI followed it over a WebSocket')
  t.notOk(seen.some(line => line === `GET /tasks/${json.uuid}`), 'and never polled')
  const client = createClient({ baseURL: base, WebSocket: WebSocket as never })
  const submitted = await client.submit('steps', { steps: 2, delay: 20 })
  const final = await new Promise<TaskState>((resolve, reject) => { client.subscribe(submitted.uuid, { onEnd: resolve, onError: reject }) })
  t.equal(final.status, 'succeeded')
  t.ok(seen.some(line => line === `UPGRADE /tasks/${submitted.uuid}/events`), 'createClient too')
})

t.test('baseURL and headers: a prefix, a CSRF header on every request, the WebSocket included', async (t) => {
  const { base, seen } = await serve(t, {
    prefix: '/api/tasks',
    auth: [async (request) => {
      if (request.headers['x-csrftoken'] !== 'secret-token') throw new Error('missing CSRF token')
    }],
  })
  t.equal(base.endsWith('/api/tasks'), true)
  const options: ClientOptions = { baseURL: `${base}/`, WebSocket, headers: () => ({ 'X-CSRFToken': 'secret-token' }) }
  const { seen: got, handlers } = recorder()
  t.same(await createClient(options).run('steps', { steps: 2, delay: 10 }, handlers), { done: 2 })
  t.same(got.messages, steps(2))
  t.ok(seen.some(line => /^UPGRADE \/api\/tasks\/[0-9a-f-]+\/events$/.test(line)), 'followed over the authenticated WebSocket')

  const refused = await createClient({ baseURL: base, WebSocket }).run('steps', { steps: 1, delay: 1 }).catch((err: unknown) => err)
  t.ok(refused instanceof TaskApiError)
  t.equal((refused as TaskApiError).statusCode, 401)
  t.equal((refused as TaskApiError).message, 'missing CSRF token')
})

t.test('streamToken: a WebSocket that cannot send headers (as in browsers) follows with a token', async (t) => {
  const { base, seen } = await serve(t, {
    auth: [async (request) => {
      if (request.headers.authorization !== 'Bearer letmein') throw new Error('who are you?')
    }],
  })
  // A browser-like WebSocket: the constructor takes a URL and protocols, nothing more.
  class BrowserLikeWebSocket extends WebSocket {
    constructor (url: string) { super(url) }
  }
  const client = createClient({ baseURL: base, WebSocket: BrowserLikeWebSocket, headers: { authorization: 'Bearer letmein' }, streamToken: true })
  const { seen: got, handlers } = recorder()
  t.same(await client.run('steps', { steps: 3, delay: 10 }, handlers), { done: 3 })
  t.same(got.messages, steps(3))
  t.ok(seen.some(line => /^GET \/tasks\/[0-9a-f-]+\/token$/.test(line)))
  t.ok(seen.some(line => /^UPGRADE \/tasks\/[0-9a-f-]+\/events\?token=/.test(line)), 'the upgrade carried the token')
  t.notOk(seen.some(line => /^GET \/tasks\/[0-9a-f-]+$/.test(line)), 'no polling')
})

t.test('outside a browser a relative baseURL is refused with a clear error', async (t) => {
  await t.rejects(createClient().get('x'), { name: 'TypeError', message: 'options.baseURL must be an absolute URL outside a browser, got "/tasks"' })
})
