import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import taskApi, { type TaskApiOptions } from '../dist/index.js'
import { build, childExecArgv, fixture, pluginTimeout, until } from './helpers.js'

// Every route and transport × (no credentials, bad credentials, another owner, the right
// user, the right user on a forbidden task). Owners are teams: alice and bob share team
// "a", mallory is on team "b". Only admins (alice) may submit or read `multi`.

interface User { name: string, team: string, admin: boolean }
const users: Record<string, User> = {
  'token-alice': { name: 'alice', team: 'a', admin: true },
  'token-bob': { name: 'bob', team: 'a', admin: false },
  'token-mallory': { name: 'mallory', team: 'b', admin: false },
}
const userOf = (request: FastifyRequest): User => (request as FastifyRequest & { user: User }).user
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })
const missing = '3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'

const options: Partial<TaskApiOptions> = {
  auth: [async (request) => {
    const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1]
    const user = token === undefined ? undefined : users[token]
    if (user === undefined) throw new Error('missing or unknown bearer token')
    ;(request as FastifyRequest & { user: User }).user = user
  }],
  owner: request => userOf(request).team,
  authorize: (request, { task }) => task !== 'multi' || userOf(request).admin,
}

interface World {
  app: FastifyInstance
  base: string
  logs: string[]
  /** alice's `hello` task: bob may read it, mallory may not see it. */
  shared: string
  /** alice's `multi` task: same team as bob, but bob may not read it. */
  forbidden: string
}

async function world (t: Test, extra: Partial<TaskApiOptions> = {}): Promise<World> {
  const logs: string[] = []
  const app = Fastify({ pluginTimeout, logger: { level: 'debug', stream: { write: (line: string) => { logs.push(line) } } } })
  t.teardown(() => app.close())
  await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, ...options, ...extra })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const submit = async (task: string, inputs: object): Promise<string> => {
    const res = await app.inject({ method: 'POST', url: '/tasks', headers: bearer('token-alice'), payload: { task, inputs } })
    if (res.statusCode !== 201) throw new Error(res.body)
    return res.json().uuid
  }
  const shared = await submit('sleep', { ms: 1500 })
  const forbidden = await submit('multi', {})
  return { app, base: `127.0.0.1:${(app.server.address() as AddressInfo).port}`, logs, shared, forbidden }
}

/** The upgrade's HTTP status: 101 when it opened, else the refusal. */
async function upgrade (url: string, headers: Record<string, string> = {}): Promise<{ status: number, socket?: WebSocket, first?: Record<string, unknown>, body?: string }> {
  const socket = new WebSocket(url, { headers })
  socket.on('error', () => {})
  const first = new Promise<Record<string, unknown>>((resolve) => socket.once('message', data => resolve(JSON.parse(data.toString()) as Record<string, unknown>)))
  return await new Promise((resolve) => {
    socket.once('open', () => { void first.then(frame => resolve({ status: 101, socket, first: frame })) })
    socket.once('unexpected-response', (_request, response: http.IncomingMessage) => {
      let body = ''
      response.on('data', (chunk: Buffer) => { body += chunk.toString() })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    })
  })
}

/** The SSE response's status and its first event (the stream is dropped after it). */
async function eventStream (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const request = http.get(url, { headers: { accept: 'text/event-stream', ...headers } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        body += chunk
        if (response.statusCode === 200 && body.includes('data: ')) {
          request.destroy()
          resolve({ status: 200, body })
        }
      })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    })
    request.on('error', (err) => { if (!request.destroyed) reject(err) })
  })
}

t.test('POST /tasks', async (t) => {
  const { app } = await world(t)
  const post = (headers: Record<string, string>, task = 'hello') =>
    app.inject({ method: 'POST', url: '/tasks', headers, payload: { task, inputs: task === 'hello' ? { name: 'x' } : {} } })
  const countTasks = async () => (await app.inject({ url: '/tasks', headers: bearer('token-alice') })).json().tasks.length as number
  const before = await countTasks()
  const none = await post({})
  t.equal(none.statusCode, 401, 'no credentials')
  t.equal(none.json().message, 'missing or unknown bearer token')
  t.same(none.json(), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', error: 'Unauthorized', message: 'missing or unknown bearer token' }, 'the body carries a code')
  t.equal((await post(bearer('token-nobody'))).statusCode, 401, 'bad credentials')
  t.equal((await post(bearer('token-bob'), 'no-such-task')).statusCode, 400, 'an authenticated user gets validation errors')
  t.equal((await post(bearer('token-bob'))).statusCode, 201, 'the right user')
  const forbidden = await post(bearer('token-bob'), 'multi')
  t.equal(forbidden.statusCode, 403, 'the right user on a forbidden task')
  t.equal(forbidden.json().code, 'FST_TASK_API_FORBIDDEN')
  t.equal(await countTasks(), before + 1, 'only the allowed submission created a task')
  const unauthenticatedInvalid = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'nope' } })
  t.equal(unauthenticatedInvalid.statusCode, 401, 'authentication comes before validation: strangers learn nothing about tasks')
})

t.test('GET /tasks/:uuid', async (t) => {
  const { app, shared, forbidden } = await world(t)
  const get = (uuid: string, headers: Record<string, string>) => app.inject({ url: `/tasks/${uuid}`, headers })
  t.equal((await get(shared, {})).statusCode, 401, 'no credentials')
  t.equal((await get(shared, bearer('token-nobody'))).statusCode, 401, 'bad credentials')
  const foreign = await get(shared, bearer('token-mallory'))
  const unknown = await get(missing, bearer('token-mallory'))
  t.equal(foreign.statusCode, 404, 'another owner')
  t.same(foreign.json(), { ...unknown.json(), message: unknown.json().message.replace(missing, shared) }, 'the same answer as a uuid that does not exist')
  t.equal((await get(shared, bearer('token-bob'))).statusCode, 200, 'the right user')
  t.equal((await get(forbidden, bearer('token-bob'))).statusCode, 403, 'the right user on a forbidden task')
  t.equal((await get(forbidden, bearer('token-alice'))).statusCode, 200, 'an admin')
})

t.test('GET /tasks (list)', async (t) => {
  const { app, shared, forbidden } = await world(t)
  const list = (headers: Record<string, string>, query = '') => app.inject({ url: `/tasks${query}`, headers })
  t.equal((await list({})).statusCode, 401, 'no credentials')
  t.equal((await list(bearer('token-nobody'))).statusCode, 401, 'bad credentials')
  const uuids = async (token: string, query = '') => ((await list(bearer(token), query)).json().tasks as Array<{ uuid: string }>).map(task => task.uuid)
  t.same(await uuids('token-mallory'), [], 'another owner sees none of them')
  t.same(await uuids('token-bob'), [shared], 'the right user sees the task, not the forbidden one')
  t.same(await uuids('token-alice'), [forbidden, shared], 'an admin sees both, newest first')
  t.same(await uuids('token-alice', '?task=sleep'), [shared], 'filter by task')
  t.same(await uuids('token-alice', '?limit=1'), [forbidden], 'limit')
  t.equal((await list(bearer('token-alice'), '?limit=0')).statusCode, 400)
  t.equal((await list(bearer('token-alice'), '?status=lost')).statusCode, 400)
})

t.test('GET /tasks/:uuid/token', async (t) => {
  const { app, shared, forbidden } = await world(t)
  const token = (uuid: string, headers: Record<string, string>) => app.inject({ url: `/tasks/${uuid}/token`, headers })
  t.equal((await token(shared, {})).statusCode, 401, 'no credentials')
  t.equal((await token(shared, bearer('token-nobody'))).statusCode, 401, 'bad credentials')
  t.equal((await token(shared, bearer('token-mallory'))).statusCode, 404, 'another owner')
  const ok = await token(shared, bearer('token-bob'))
  t.equal(ok.statusCode, 200, 'the right user')
  t.match(ok.json(), { token: /^[0-9a-z]+\.[\w-]+$/, expires: /^\d{4}-/ })
  t.equal(ok.headers['cache-control'], 'no-store')
  t.equal((await token(forbidden, bearer('token-bob'))).statusCode, 403, 'the right user on a forbidden task')
})

t.test('WebSocket GET /tasks/:uuid/events', async (t) => {
  const { app, base, shared, forbidden } = await world(t)
  const url = (uuid: string, query = '') => `ws://${base}/tasks/${uuid}/events${query}`
  const refused = await upgrade(url(shared))
  t.equal(refused.status, 401, 'no credentials: refused before the 101')
  t.match(JSON.parse(refused.body ?? '{}'), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', message: 'missing or unknown bearer token' }, 'a JSON body with a code')
  t.equal((await upgrade(url(shared), bearer('token-nobody'))).status, 401, 'bad credentials')
  const foreign = await upgrade(url(shared), bearer('token-mallory'))
  const unknown = await upgrade(url(missing), bearer('token-mallory'))
  t.equal(foreign.status, 404, 'another owner')
  t.equal(foreign.body, unknown.body?.replace(missing, shared), 'the same answer as a uuid that does not exist')
  const right = await upgrade(url(shared), bearer('token-bob'))
  t.equal(right.status, 101, 'the right user')
  t.equal(right.first?.type, 'snapshot')
  right.socket?.terminate()
  t.equal((await upgrade(url(forbidden), bearer('token-bob'))).status, 403, 'the right user on a forbidden task')

  const { token } = app.tasks.streamToken(shared)
  const withToken = await upgrade(url(shared, `?token=${token}`))
  t.equal(withToken.status, 101, 'a stream token stands in for the credentials')
  withToken.socket?.terminate()
  t.equal((await upgrade(url(forbidden, `?token=${token}`))).status, 401, 'a token for another task is refused')
  t.equal((await upgrade(url(shared, '?token=garbage'))).status, 401, 'a malformed token is refused')
  const expired = app.tasks.streamToken(shared, 1)
  while (Date.now() <= Date.parse(expired.expires)) await new Promise(resolve => setTimeout(resolve, 1))
  t.equal((await upgrade(url(shared, `?token=${expired.token}`))).status, 401, 'an expired token is refused')
})

t.test('SSE GET /tasks/:uuid/events', async (t) => {
  const { app, base, shared, forbidden } = await world(t)
  const url = (uuid: string, query = '') => `http://${base}/tasks/${uuid}/events${query}`
  const refused = await eventStream(url(shared))
  t.equal(refused.status, 401, 'no credentials')
  t.match(JSON.parse(refused.body), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED' }, 'a JSON body with a code')
  t.equal((await eventStream(url(shared), bearer('token-nobody'))).status, 401, 'bad credentials')
  const foreign = await eventStream(url(shared), bearer('token-mallory'))
  const unknown = await eventStream(url(missing), bearer('token-mallory'))
  t.equal(foreign.status, 404, 'another owner')
  t.equal(foreign.body, unknown.body.replace(missing, shared), 'the same answer as a uuid that does not exist')
  const right = await eventStream(url(shared), bearer('token-bob'))
  t.equal(right.status, 200, 'the right user')
  t.match(right.body, /"type":"snapshot"/)
  t.equal((await eventStream(url(forbidden), bearer('token-bob'))).status, 403, 'the right user on a forbidden task')
  const { token } = app.tasks.streamToken(shared)
  t.equal((await eventStream(url(shared, `?token=${token}`))).status, 200, 'an EventSource can use a stream token')
})

/** The first frame answering each subscribe on a multiplexed socket opened at `url` with `headers`. */
async function subscribed (url: string, headers: Record<string, string>, uuids: string[]): Promise<Array<Record<string, unknown>>> {
  const socket = new WebSocket(url, { headers })
  const got: Array<Record<string, unknown>> = []
  socket.on('message', data => got.push(JSON.parse(data.toString()) as Record<string, unknown>))
  await once(socket, 'open')
  for (const uuid of uuids) socket.send(JSON.stringify({ type: 'subscribe', uuid }))
  const deadline = Date.now() + 5000
  while (got.length < uuids.length && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  socket.terminate()
  return got
}

t.test('WebSocket GET /tasks/events (multiplexed)', async (t) => {
  const { app, base, shared, forbidden } = await world(t)
  const url = `ws://${base}/tasks/events`
  t.equal((await upgrade(url)).status, 401, 'no credentials: refused before the 101')
  t.equal((await upgrade(url, bearer('token-nobody'))).status, 401, 'bad credentials')

  const frames = async (token: string, uuids: string[]): Promise<Array<Record<string, unknown>>> => await subscribed(url, bearer(token), uuids)
  const answers = await frames('token-mallory', [shared, missing])
  const foreign = answers.find(frame => frame.uuid === shared)
  const unknown = answers.find(frame => frame.uuid === missing)
  t.same(foreign, { type: 'error', uuid: shared, message: `task ${shared} not found` }, 'another owner')
  t.same(foreign, { ...unknown, uuid: shared, message: (unknown?.message as string).replace(missing, shared) }, 'the error frame is identical to the one for an unknown uuid')
  const [right] = await frames('token-bob', [shared])
  t.equal(right?.type, 'snapshot', 'the right user')
  const [refused] = await frames('token-bob', [forbidden])
  t.same(refused, { type: 'error', uuid: forbidden, message: 'not allowed' }, 'the right user on a forbidden task')
  const socket = new WebSocket(url, { headers: bearer('token-mallory') })
  await once(socket, 'open')
  const { token } = app.tasks.streamToken(shared)
  socket.send(JSON.stringify({ type: 'subscribe', uuid: shared, token }))
  const [data] = await once(socket, 'message') as [Buffer]
  t.equal((JSON.parse(data.toString()) as { type: string }).type, 'snapshot', 'a subscribe frame may carry a stream token')
  socket.terminate()
})

t.test('a socket token opens the multiplexed socket as the request that asked for it', async (t) => {
  const secret = 'a secret shared by the API nodes'
  const { app, base, shared, forbidden, logs } = await world(t, { streamTokens: { secret } })
  const url = `ws://${base}/tasks/events`
  const mint = async (headers: Record<string, string>) => await app.inject({ url: '/tasks/events/token', headers })
  const none = await mint({})
  t.equal(none.statusCode, 401, 'minting needs credentials')
  t.equal(none.json().code, 'FST_TASK_API_UNAUTHENTICATED')
  const minted = await mint(bearer('token-bob'))
  t.equal(minted.statusCode, 200)
  t.equal(minted.headers['cache-control'], 'no-store')
  const { token, expires } = minted.json() as { token: string, expires: string }
  t.match(token, /^[0-9a-z]+\.[A-Za-z0-9_-]+$/)
  t.ok(Date.parse(expires) > Date.now(), 'it expires in the future')
  t.notMatch(Buffer.from(token.split('.')[1] as string, 'base64url').toString('latin1'), /token-bob/, 'the credentials it carries are encrypted')

  // No header on the upgrade: the token's are used, so auth, owner and authorize are bob's.
  const [snapshot, refused] = await subscribed(`${url}?token=${token}`, {}, [shared, forbidden])
  t.equal(snapshot?.type, 'snapshot', 'bob follows his team\'s task')
  t.same(refused, { type: 'error', uuid: forbidden, message: 'not allowed' }, 'authorize still sees bob')
  const mallorys = (await mint(bearer('token-mallory'))).json().token as string
  const [foreign] = await subscribed(`${url}?token=${mallorys}`, {}, [shared])
  t.same(foreign, { type: 'error', uuid: shared, message: `task ${shared} not found` }, 'another owner\'s token sees nothing of it')

  const [stamp, sealed] = token.split('.') as [string, string]
  const flipped = sealed.slice(0, 10) + (sealed[10] === 'A' ? 'B' : 'A') + sealed.slice(11)
  for (const [bad, why] of [
    [`${stamp}.${flipped}`, 'an altered token'],
    [`${(parseInt(stamp, 36) + 1000).toString(36)}.${sealed}`, 'a token whose expiry was moved'],
    [app.tasks.streamToken(shared).token, 'a task\'s stream token'],
    ['garbage', 'garbage'],
  ] as const) {
    const answer = await upgrade(`${url}?token=${encodeURIComponent(bad)}`)
    t.equal(answer.status, 401, why)
    t.match(answer.body, /FST_TASK_API_TOKEN_INVALID/, why)
  }
  t.notOk(logs.some(line => line.includes(token)), 'the token never reaches the log')

  // Another API node with the same secret takes it; one with another secret does not.
  const twin = Fastify({ pluginTimeout, logger: false })
  t.teardown(() => twin.close())
  await twin.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, ...options, streamTokens: { secret } })
  await twin.listen({ port: 0, host: '127.0.0.1' })
  const twinUrl = `ws://127.0.0.1:${(twin.server.address() as AddressInfo).port}/tasks/events`
  const [onTwin] = await subscribed(`${twinUrl}?token=${token}`, {}, [missing])
  t.same(onTwin, { type: 'error', uuid: missing, message: `task ${missing} not found` }, 'a node sharing the secret opens the socket')
  const other = Fastify({ pluginTimeout, logger: false })
  t.teardown(() => other.close())
  await other.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, ...options, streamTokens: { secret: 'another secret entirely' } })
  await other.listen({ port: 0, host: '127.0.0.1' })
  t.equal((await upgrade(`ws://127.0.0.1:${(other.server.address() as AddressInfo).port}/tasks/events?token=${token}`)).status, 401, 'a node with another secret')
})

t.test('streamTokens.headers: a socket token carries the headers the strategies read', async (t) => {
  const app = Fastify({ pluginTimeout, logger: false })
  t.teardown(() => app.close())
  await app.register(taskApi, {
    tasks: [fixture('basic.ts')],
    concurrency: 1,
    execArgv: childExecArgv,
    auth: [async (request) => { if (!/^key-/.test(String(request.headers['x-api-key']))) throw new Error('an API key is required') }],
    streamTokens: { headers: ['X-Api-Key'] },
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}/tasks/events`
  const { token } = (await app.inject({ url: '/tasks/events/token', headers: { 'x-api-key': 'key-1', authorization: 'Bearer not-carried' } })).json() as { token: string }
  const [answer] = await subscribed(`${url}?token=${token}`, {}, [missing])
  t.same(answer, { type: 'error', uuid: missing, message: `task ${missing} not found` }, 'the socket opened with the key the token carried')
  t.equal((await upgrade(url)).status, 401, 'not without it')
  // A large credential still fits (a JWT of 8,000 characters); one past 9,000 bytes is refused when minted.
  const large = (await app.inject({ url: '/tasks/events/token', headers: { 'x-api-key': `key-${'k'.repeat(8000)}` } })).json() as { token: string }
  const [onLarge] = await subscribed(`${url}?token=${large.token}`, {}, [missing])
  t.equal(onLarge?.type, 'error', 'a socket opened with a token carrying 8 KB')
  const huge = await app.inject({ url: '/tasks/events/token', headers: { 'x-api-key': `key-${'k'.repeat(9500)}` } })
  t.equal(huge.statusCode, 431)
  t.match(huge.json(), { code: 'FST_TASK_API_TOKEN_TOO_LARGE', message: /too large for a socket token: \d+ bytes of headers, at most 9000/ })
  const rejected = Fastify({ pluginTimeout, logger: false })
  t.teardown(() => rejected.close())
  await t.rejects(async () => { await rejected.register(taskApi, { tasks: [fixture('basic.ts')], streamTokens: { headers: ['bad header'] } }) }, { code: 'FST_TASK_API_OPT_INVALID', message: /streamTokens\.headers must be an array of header names/ })
})

t.test('a socket token expires', async (t) => {
  const { app, base } = await world(t, { streamTokens: { ttl: 200 } })
  const { token, expires } = (await app.inject({ url: '/tasks/events/token', headers: bearer('token-bob') })).json() as { token: string, expires: string }
  await until('the token expired', () => Date.now() > Date.parse(expires) + 5)
  t.equal((await upgrade(`ws://${base}/tasks/events?token=${token}`)).status, 401)
})

t.test('a cross-origin WebSocket upgrade is refused; same-host and allowed origins pass', async (t) => {
  const { base, shared } = await world(t)
  const url = `ws://${base}/tasks/${shared}/events`
  const evil = await upgrade(url, { ...bearer('token-bob'), origin: 'https://evil.example' })
  t.equal(evil.status, 403, 'cross-site WebSocket hijacking fails even with valid credentials')
  t.match(evil.body, /FST_TASK_API_ORIGIN_FORBIDDEN/)
  t.equal((await upgrade(`ws://${base}/tasks/events`, { ...bearer('token-bob'), origin: 'https://evil.example' })).status, 403, 'on the multiplexed route too')
  const same = await upgrade(url, { ...bearer('token-bob'), origin: `http://${base}` })
  t.equal(same.status, 101, 'the page\'s own origin')
  same.socket?.terminate()
})

t.test('allowedOrigins lists the origins that may connect', async (t) => {
  const { base, shared } = await world(t, { allowedOrigins: ['https://app.example'] })
  const url = `ws://${base}/tasks/${shared}/events`
  const allowed = await upgrade(url, { ...bearer('token-bob'), origin: 'https://app.example' })
  t.equal(allowed.status, 101)
  allowed.socket?.terminate()
  t.equal((await upgrade(url, { ...bearer('token-bob'), origin: 'https://other.example' })).status, 403, 'an origin not listed')
  const own = await upgrade(url, { ...bearer('token-bob'), origin: `http://${base}` })
  t.equal(own.status, 101, 'the server\'s own origin always may')
  own.socket?.terminate()
})

t.test('logs never show a stream token or the inputs, not even those of tasks that fail', async (t) => {
  const { app, base, logs } = await world(t, { tasks: [fixture('basic.ts'), fixture('secrets.ts')] })
  const secret = 'hunter2-do-not-log'
  const submit = async (inputs: object): Promise<string> => {
    const res = await app.inject({ method: 'POST', url: '/tasks', headers: bearer('token-alice'), payload: { task: 'login', inputs, secret } })
    t.equal(res.statusCode, 201)
    return res.json().uuid
  }
  // A failure that is retried, then fails for good; a child that dies; a refused input.
  const thrown = await submit({ user: 'ann', password: secret })
  const crashed = await submit({ user: 'ann', password: secret, crash: true })
  t.match(await app.tasks.wait(thrown), { status: 'failed', attempt: 2, error: 'login refused for ann' })
  t.match(await app.tasks.wait(crashed), { status: 'failed', attempt: 2, error: 'the child process running the task exited with code 3' })
  const refused = await app.inject({ method: 'POST', url: '/tasks', headers: bearer('token-alice'), payload: { task: 'login', inputs: { user: 'ann', password: { secret } } } })
  t.equal(refused.statusCode, 400)
  const { token } = app.tasks.streamToken(thrown)
  const socket = await upgrade(`ws://${base}/tasks/${thrown}/events?token=${token}`)
  t.equal(socket.status, 101)
  socket.socket?.terminate()
  await eventStream(`http://${base}/tasks/${thrown}/events?token=${token}&since=0`)
  // Both stream requests are logged as they come in: wait for those lines.
  await until('both stream requests in the log', () => logs.filter(line => line.includes('token=[redacted]')).length >= 2)
  const text = logs.join('')
  const failures = logs.map(line => JSON.parse(line) as { msg: string, uuid?: string }).filter(line => /^fastify-task-api: task failed/.test(line.msg))
  t.same(failures.map(line => [line.uuid, line.msg]).sort(), [
    [thrown, 'fastify-task-api: task failed'],
    [thrown, 'fastify-task-api: task failed, retrying'],
    [crashed, 'fastify-task-api: task failed'],
    [crashed, 'fastify-task-api: task failed, retrying'],
  ].sort(), 'the failures of the tasks that held the secret were logged, with their records at hand')
  t.notOk(text.includes(secret), 'inputs never reach the log')
  t.match(text, /token=\[redacted\]/, 'the stream requests were logged, redacted')
  t.notOk(text.includes(token), 'the token never reaches the log')
  t.notOk(text.includes(token.split('.')[1] as string), 'not even its signature')
})

t.test('without auth options the API stays open, and owner alone scopes by owner', async (t) => {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(taskApi, {
    tasks: [fixture('basic.ts')],
    concurrency: 1,
    execArgv: childExecArgv,
    owner: request => (request.headers['x-user'] as string | undefined) ?? null,
  })
  const created = await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': 'ann' }, payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(created.statusCode, 201)
  const uuid = created.json().uuid as string
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: { 'x-user': 'ann' } })).statusCode, 200)
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: { 'x-user': 'ben' } })).statusCode, 404)
  t.equal((await app.inject({ url: `/tasks/${uuid}` })).statusCode, 404, 'an anonymous request is no owner')
  t.equal((await app.tasks.get(uuid))?.uuid, uuid, 'server code is not scoped')
  const mine = await app.tasks.submit('hello', { name: 'y' }, { owner: 'ben' })
  t.equal((await app.inject({ url: `/tasks/${mine.uuid}`, headers: { 'x-user': 'ben' } })).statusCode, 200, 'app.tasks.submit takes an owner')
})

t.test('a refusal keeps the code the strategy\'s error carries; one without gets FST_TASK_API_UNAUTHENTICATED', async (t) => {
  const app = await build(t, {
    auth: [async (request) => {
      if (request.headers.authorization === undefined) throw Object.assign(new Error('no authorization header'), { code: 'APP_NO_HEADER' })
      throw new Error('wrong token')
    }],
  })
  const coded = await app.inject({ url: `/tasks/${missing}` })
  t.same(coded.json(), { statusCode: 401, code: 'APP_NO_HEADER', error: 'Unauthorized', message: 'no authorization header' })
  const plain = await app.inject({ url: `/tasks/${missing}`, headers: bearer('x') })
  t.same(plain.json(), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', error: 'Unauthorized', message: 'wrong token' })
})

t.test('whatever a strategy or authorize throws, the answer is its status with a code, and the server stays up', async (t) => {
  const app = await build(t, {
    auth: [async (request) => {
      const how = request.headers['x-auth']
      // eslint-disable-next-line @typescript-eslint/only-throw-error
      if (how === 'string') throw 'unauthorized'
      if (how === 'frozen') throw Object.freeze(new Error('frozen refusal'))
      // eslint-disable-next-line @typescript-eslint/only-throw-error
      if (how === 'object') throw { message: 'plain object', statusCode: 401 }
    }],
    authorize: (request) => {
      const how = request.headers['x-authorize']
      // eslint-disable-next-line @typescript-eslint/only-throw-error
      if (how === 'object') throw { statusCode: 403, message: 'no, says a plain object' }
      if (how === 'teapot') throw Object.assign(new Error('I am a teapot'), { statusCode: 418 })
      return true
    },
  })
  const get = async (headers: Record<string, string>) => await app.inject({ url: '/tasks/catalog', headers })
  t.same((await get({ 'x-auth': 'string' })).json(), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', error: 'Unauthorized', message: 'unauthorized' }, 'a thrown string (it crashed the process)')
  t.same((await get({ 'x-auth': 'frozen' })).json(), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', error: 'Unauthorized', message: 'frozen refusal' }, 'a frozen error')
  t.same((await get({ 'x-auth': 'object' })).json(), { statusCode: 401, code: 'FST_TASK_API_UNAUTHENTICATED', error: 'Unauthorized', message: 'plain object' }, 'a plain object')
  const submit = async (headers: Record<string, string>) => await app.inject({ method: 'POST', url: '/tasks', headers, payload: { task: 'hello', inputs: { name: 'x' } } })
  t.same((await submit({ 'x-authorize': 'object' })).json(), { statusCode: 403, code: 'FST_TASK_API_FORBIDDEN', error: 'Forbidden', message: 'no, says a plain object' }, 'authorize throwing a plain object: its 403 (Fastify answered 200)')
  t.same((await submit({ 'x-authorize': 'teapot' })).json(), { statusCode: 418, code: 'FST_TASK_API_REFUSED', error: "I'm a Teapot", message: 'I am a teapot' }, 'another 4xx without a code')
  t.equal((await submit({})).statusCode, 201, 'and the server goes on')
})
