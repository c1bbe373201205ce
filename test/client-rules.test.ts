import { createServer, type AddressInfo } from 'node:net'
import { once } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import type { TaskApiOptions } from '../dist/index.js'
import TaskAPI, { createClient, TaskApiError, type TaskState } from '../dist/client/index.js'
import { build, fixture, untilRunning } from './helpers.js'

// README, Client: the seed's CSRF cookie → header, and when polling stops. A real server
// on a real port; network failures are real refused connections.

interface Server { app: FastifyInstance, base: string, requests: Array<{ line: string, headers: IncomingHttpHeaders }> }

async function serve (t: Test, options: Partial<TaskApiOptions> = {}): Promise<Server> {
  const app = await build(t, { tasks: [fixture('basic.ts'), fixture('control.ts')], ...options })
  const requests: Server['requests'] = []
  app.server.on('request', (request) => requests.push({ line: `${request.method} ${request.url}`, headers: request.headers }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/tasks`, requests }
}

/** A port nothing listens on: fetching it fails the way a network outage does. */
async function deadPort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

const polls = (server: Server): string[] => server.requests.map(request => request.line).filter(line => /^GET \/tasks\/[0-9a-f-]+$/.test(line))

/** An auth strategy that wants `header` to carry the CSRF token. */
const csrf = (header: string) => [async (request: FastifyRequest) => {
  if (request.headers[header] !== 'tok=en') throw new Error('missing CSRF token')
}]

function fakeDocument (t: Test, cookie: string): void {
  const globals = globalThis as { document?: { cookie: string } }
  const saved = { ...TaskAPI.options, headers: { ...TaskAPI.options.headers } }
  t.teardown(() => {
    delete globals.document
    Object.assign(TaskAPI.options, saved)
  })
  globals.document = { cookie }
}

t.test('TaskAPI sends the CSRF cookie back as a header on every request', async (t) => {
  const server = await serve(t, { auth: csrf('x-csrftoken') })
  fakeDocument(t, 'theme=dark; csrftoken=tok%3Den; other=1')
  TaskAPI.options.baseURL = server.base
  TaskAPI.options.headers = { 'x-extra': 'also' }
  // Node has no WebSocket or EventSource here: the seed's client polls, every request with the header.
  const json = await TaskAPI.run('multi', {})
  t.equal(json.status, 'succeeded')
  t.same(json.outputs, { out: 'Foo', count: 5 })
  t.match(server.requests[0]?.line, /^POST \/tasks$/, 'submitted')
  t.same(server.requests.slice(1).map(request => request.line), polls(server), 'then only polls')
  t.same(server.requests.map(request => [request.headers['x-csrftoken'], request.headers['x-extra']]),
    server.requests.map(() => ['tok=en', 'also']), 'the decoded cookie value, and options.headers, on each')
})

t.test('TaskAPI takes other cookie and header names; without the cookie it sends no header', async (t) => {
  const server = await serve(t, { auth: csrf('x-xsrf-token') })
  fakeDocument(t, 'XSRF-TOKEN=tok%3Den')
  TaskAPI.options.baseURL = server.base
  TaskAPI.options.csrfCookieName = 'XSRF-TOKEN'
  TaskAPI.options.csrfHeaderName = 'X-XSRF-TOKEN'
  t.equal((await TaskAPI.run('multi', {})).status, 'succeeded')
  t.same(server.requests.map(request => request.headers['x-xsrf-token']), server.requests.map(() => 'tok=en'))
  t.notOk(server.requests.some(request => 'x-csrftoken' in request.headers), 'not under the default name')

  ;(globalThis as { document?: { cookie: string } }).document = { cookie: 'csrftoken=tok%3Den' }
  const refused = await TaskAPI.run('multi', {}).catch((err: unknown) => err)
  t.ok(refused instanceof TaskApiError)
  t.match(refused, { statusCode: 401, message: 'missing CSRF token' }, 'a page without that cookie sends nothing, and is refused')
})

t.test('polling ends at an HTTP error: onError with it, and no poll after', async (t) => {
  let allowed = true
  const server = await serve(t, { auth: [async () => { if (!allowed) throw new Error('session expired') }] })
  const client = createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 10 })
  const { uuid } = await client.submit('cooperative')
  const updates: TaskState[] = []
  const err = await new Promise<Error>((resolve, reject) => {
    client.subscribe(uuid, {
      onUpdate: (task) => {
        updates.push(structuredClone(task))
        allowed = false
      },
      onError: resolve,
      onEnd: () => reject(new Error('ended')),
    })
  })
  t.ok(err instanceof TaskApiError)
  t.match(err, { statusCode: 401, message: 'session expired' })
  t.equal(updates.length, 1, 'one poll got through')
  t.equal(polls(server).length, 2, 'the one that failed was the last')
  await new Promise(resolve => setTimeout(resolve, 200)) // 20 poll intervals: none may come
  t.equal(polls(server).length, 2, 'and none came after it')
  await server.app.tasks.cancel(uuid)
})

/**
 * A fetch that fails (a real refused connection) on the polls the plan marks, and
 * counts every call. `plan(n)` is asked about the n-th poll, from 1; `before(n)` is
 * awaited before it.
 */
function flakyFetch (dead: number, plan: (n: number) => 'ok' | 'fail', before?: (n: number) => Promise<void>) {
  const seen: Array<'ok' | 'fail'> = []
  const fetchFn: typeof fetch = async (input, init) => {
    const url = String(input)
    if (!/\/tasks\/[0-9a-f-]+$/.test(new URL(url).pathname) || init?.method !== 'GET') return await fetch(input, init)
    await before?.(seen.length + 1)
    const outcome = plan(seen.length + 1)
    seen.push(outcome)
    return await fetch(outcome === 'ok' ? url : url.replace(/:\d+\//, `:${dead}/`), init)
  }
  return { fetch: fetchFn, seen }
}

t.test('polling survives two network failures in a row, again and again: a success resets the count', async (t) => {
  const server = await serve(t)
  const { uuid } = await server.app.tasks.submit('cooperative')
  // Running before the first poll, so the statuses seen are exactly running, cancelled.
  await untilRunning(server.app, uuid)
  // Before the seventh poll the task is cancelled on the server (and has ended).
  const flaky = flakyFetch(await deadPort(), n => n % 3 === 0 ? 'ok' : 'fail', async (n) => {
    if (n !== 7) return
    await server.app.tasks.cancel(uuid)
    await server.app.tasks.wait(uuid)
  })
  const client = createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 10, fetch: flaky.fetch })
  const statuses: string[] = []
  const final = await new Promise<TaskState>((resolve, reject) => {
    client.subscribe(uuid, {
      onStatus: status => statuses.push(status),
      onEnd: resolve,
      onError: reject,
    })
  })
  t.equal(final.status, 'cancelled', 'followed to the end')
  t.same(statuses, ['running', 'cancelled'])
  t.same(flaky.seen, ['fail', 'fail', 'ok', 'fail', 'fail', 'ok', 'fail', 'fail', 'ok'], 'two failures, a success, and so on until the final status')
})

t.test('polling ends after three network failures in a row, with the last one\'s error', async (t) => {
  const server = await serve(t)
  const { uuid } = await server.app.tasks.submit('cooperative')
  const flaky = flakyFetch(await deadPort(), n => n === 1 ? 'ok' : 'fail')
  const client = createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 10, fetch: flaky.fetch })
  const err = await new Promise<Error>((resolve, reject) => {
    client.subscribe(uuid, { onError: resolve, onEnd: () => reject(new Error('ended')) })
  })
  t.ok(err instanceof TaskApiError, 'a TaskApiError, never a bare "fetch failed"')
  t.match(err, { statusCode: 0, uuid, message: /^the task API could not be reached \(GET http:\/\/127\.0\.0\.1:\d+\/tasks\/[0-9a-f-]+\): ECONNREFUSED$/, cause: { name: 'TypeError', message: 'fetch failed', cause: { code: 'ECONNREFUSED' } } })
  t.same(flaky.seen, ['ok', 'fail', 'fail', 'fail'])
  await new Promise(resolve => setTimeout(resolve, 200)) // 20 poll intervals: none may come
  t.equal(flaky.seen.length, 4, 'no poll after the third failure')
  const run = await createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 10, fetch: flakyFetch(await deadPort(), () => 'fail').fetch })
    .run('hello', { name: 'x' }).catch((err: unknown) => err)
  t.match(run, { name: 'TaskApiError', statusCode: 0, message: /^the task API could not be reached \(GET http:\/\/127\.0\.0\.1:\d+\/tasks\/[0-9a-f-]+\): ECONNREFUSED$/, cause: { message: 'fetch failed' } }, 'run rejects with it')
  await server.app.tasks.cancel(uuid)
})

t.test('seed style: with an errback, a failure reaches it and never also becomes an unhandled rejection', async (t) => {
  const server = await serve(t)
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })
  TaskAPI.options.baseURL = server.base
  t.teardown(() => { TaskAPI.options.baseURL = '/tasks' })
  const errors = await Promise.all([
    new Promise<Error>((resolve) => { void TaskAPI.run('no-such-task', {}, null, null, resolve) }),
    new Promise<Error>((resolve) => { void createClient({ baseURL: server.base }).run('no-such-task', {}, null, null, resolve) }),
    new Promise<Error>((resolve) => { void TaskAPI.run('hello', { name: 'x', count: 'many' }, null, null, resolve) }),
  ])
  t.same(errors.map(err => (err as TaskApiError).statusCode), [400, 400, 400], 'each errback got the refusal')
  // Unhandled rejections are reported after the microtasks of the turn: give them two turns.
  await new Promise(resolve => setTimeout(resolve, 50))
  t.same(unhandled, [], 'no unhandled rejection')
  const late = await TaskAPI.run('no-such-task', {}, null, null, () => {}).catch((err: unknown) => err)
  t.match(late, { name: 'TaskApiError', statusCode: 400 }, 'the promise still rejects for a caller that awaits it')
})

t.test('onProgress never hears (null, null) nor the same pair twice; the seed\'s progressCallback never gets an unchanged record', async (t) => {
  const server = await serve(t)
  const client = createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 5 })
  const progress: Array<[number | null, number | null]> = []
  const records: string[] = []
  const running = server.app.tasks.submit('cooperative')
  const { uuid } = await running
  const final = new Promise<TaskState>((resolve, reject) => {
    client.subscribe(uuid, { onProgress: (p, target) => progress.push([p, target]), onUpdate: task => records.push(JSON.stringify(task)), onEnd: resolve, onError: reject })
  })
  await untilRunning(server.app, uuid)
  // About 60 polls of an unchanged running task.
  await new Promise(resolve => setTimeout(resolve, 300))
  await server.app.tasks.cancel(uuid)
  t.equal((await final).status, 'cancelled')
  t.same(progress.filter(([p, target]) => p === null && target === null), [], 'never (null, null)')
  t.ok(progress.every((pair, i) => i === 0 || JSON.stringify(pair) !== JSON.stringify(progress[i - 1])), `no pair twice in a row: ${JSON.stringify(progress)}`)
  t.ok(records.every((record, i) => i === 0 || record !== records[i - 1]), 'no unchanged record twice in a row')
  t.ok(records.length <= 4, `one update per change, not per poll: ${records.length}`)
  const seed: string[] = []
  const seeded = await createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 5 })
    .run('sleep', { ms: 200 }, task => { seed.push(JSON.stringify(task)) })
  t.match(seeded, { pid: Number }, 'resolved with the outputs')
  t.ok(seed.every((record, i) => i === 0 || record !== seed[i - 1]) && seed.length <= 4, `progressCallback: one call per change (${seed.length})`)
})

t.test('following a task that is gone (404) ends with an error carrying the uuid and the status; nothing stays pending', async (t) => {
  const server = await serve(t)
  const ended = await server.app.tasks.submit('hello', { name: 'x' })
  await server.app.tasks.wait(ended.uuid)
  t.equal((await server.app.inject({ method: 'DELETE', url: `/tasks/${ended.uuid}` })).statusCode, 204)
  for (const uuid of [ended.uuid, '3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b']) {
    const client = createClient({ baseURL: server.base, transports: ['poll'], pollInterval: 10 })
    const err = await new Promise<Error>((resolve, reject) => {
      client.subscribe(uuid, { onError: resolve, onEnd: () => reject(new Error('ended')) })
    })
    t.ok(err instanceof TaskApiError)
    t.match(err, { statusCode: 404, uuid, code: 'FST_TASK_API_TASK_NOT_FOUND' })
  }
})
