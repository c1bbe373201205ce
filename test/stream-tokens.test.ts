import { Writable } from 'node:stream'
import { once } from 'node:events'
import http from 'node:http'
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import { MemoryStore } from '../dist/index.js'
import { childExecArgv } from './helpers.js'
import { eventually, follow, serve, upgradeStatus } from './stream-helpers.js'

// Stream tokens are read strictly, and never reach the log of any route.

// Each test starts a server with its own pool of children: under load the file can take
// longer than tap's default 60 s.
t.setTimeout(180_000)

t.test('malformed stream tokens of every kind get 401 FST_TASK_API_TOKEN_INVALID on every event route', async (t) => {
  const { app, base } = await serve(t)
  // Finished tasks: a token wrongly accepted gets the snapshot and the end of the stream
  // (a 200 or a 101 that the test reports) rather than a stream that never ends.
  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  const other = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(task.uuid)
  await app.tasks.wait(other.uuid)
  const { token } = app.tasks.streamToken(task.uuid)
  const [stamp, mac] = token.split('.') as [string, string]
  t.match(token, /^[0-9a-z]{1,11}\.[A-Za-z0-9_-]{43}$/, 'a token is <expiry in base36>.<43 base64url characters>')
  const flip = (c: string): string => c === 'A' ? 'B' : 'A'
  const malformed: Array<[string, string]> = [
    ['empty', ''],
    ['no dot', `${stamp}${mac}`],
    ['only a dot', '.'],
    ['no signature', `${stamp}.`],
    ['no expiry', `.${mac}`],
    ['expiry in capitals (parseInt would take it)', `${stamp.toUpperCase()}.${mac}`],
    ['expiry with a leading zero', `0${stamp}.${mac}`],
    ['expiry with a sign', `+${stamp}.${mac}`],
    ['expiry with a minus sign', `-${stamp}.${mac}`],
    ['expiry after a space (parseInt skips it)', ` ${stamp}.${mac}`],
    ['expiry with trailing junk (parseInt stops there)', `${stamp}!.${mac}`],
    ['expiry past the safe integers', `${'z'.repeat(12)}.${mac}`],
    ['signature one character short', `${stamp}.${mac.slice(1)}`],
    ['signature one character long', `${stamp}.${mac}A`],
    ['signature with base64 padding', `${stamp}.${mac.slice(0, 42)}=`],
    ['signature with a "+"', `${stamp}.${mac.slice(0, 42)}+`],
    ['signature with a "/"', `${stamp}.${mac.slice(0, 42)}/`],
    ['signature with one character changed', `${stamp}.${mac.slice(0, 42)}${flip(mac.at(-1) as string)}`],
    ['a third part', `${token}.x`],
    ['10,000 characters', 'a'.repeat(10_000)],
    ['a token for another task', app.tasks.streamToken(other.uuid).token],
    ['an expired token', app.tasks.streamToken(task.uuid, -1000).token],
  ]
  const events = `/tasks/${task.uuid}/events`
  for (const [kind, bad] of malformed) {
    const query = `?token=${encodeURIComponent(bad)}`
    const sse = await app.inject({ url: events + query, headers: { accept: 'text/event-stream' } })
    t.equal(sse.statusCode, 401, `SSE: ${kind}`)
    t.equal(sse.headers['content-type']?.toString().startsWith('application/json') === true ? sse.json().code : sse.body.slice(0, 40),
      'FST_TASK_API_TOKEN_INVALID', `SSE: ${kind}: the code`)
    const upgrade = await upgradeStatus(`ws://${base}${events}${query}`)
    t.equal(upgrade.status, 401, `WebSocket: ${kind}`)
    upgrade.socket.terminate()
  }

  // The multiplexed socket: each subscribe with a bad token gets the token's error frame.
  const { socket, frames } = follow(`ws://${base}/tasks/events`)
  await once(socket, 'open')
  // (A 10,000-character frame is over streams.maxPayload: the socket would close with 1009.)
  for (const [kind, bad] of malformed.filter(([, bad]) => bad.length < 1000)) {
    const before = frames.length
    socket.send(JSON.stringify({ type: 'subscribe', uuid: task.uuid, token: bad }))
    t.ok(await eventually(() => frames.length > before), `multiplexed: ${kind}: answered`)
    t.same(frames[before], { type: 'error', uuid: task.uuid, message: 'the stream token is invalid or expired' }, `multiplexed: ${kind}`)
  }
  socket.close()

  const good = await upgradeStatus(`ws://${base}${events}?token=${token}`)
  t.equal(good.status, 101, 'the well-formed token still opens the stream')
  good.socket.terminate()
})

/** Lines a logger wrote, parsed. */
function logSink () {
  const lines: Array<Record<string, unknown> & { msg?: string, req?: { url?: string } }> = []
  let raw = ''
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      raw += chunk.toString()
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as (typeof lines)[number])
      done()
    },
  })
  return { stream, lines, text: () => raw }
}

t.test('token= is redacted from the log of every route the plugin registers, errors included', async (t) => {
  const log = logSink()
  const broken = '00000000-0000-4000-8000-000000000000'
  // A store that fails for one uuid: a 500, which Fastify logs with the request.
  class FailingStore extends MemoryStore {
    override async get (uuid: string) {
      if (uuid === broken) throw new Error('the store is down')
      return await super.get(uuid)
    }
  }
  const { app, base } = await serve(t, {
    store: new FailingStore(),
    owner: (request: FastifyRequest) => (request.headers['x-user'] as string | undefined) ?? null,
    execArgv: childExecArgv,
  }, { logger: { level: 'info', stream: log.stream } })
  const task = await app.tasks.submit('steps', { steps: 1, delay: 1 })
  await app.tasks.wait(task.uuid)
  const { token } = app.tasks.streamToken(task.uuid)
  const q = `token=${token}`

  const requests: Array<[string, string]> = [
    ['POST', `/tasks?${q}`],
    ['POST', `/tasks?${q}&bad=1`],
    ['GET', `/tasks?${q}`],
    ['GET', `/tasks/${task.uuid}?${q}`],
    ['GET', `/tasks/${task.uuid}?a=1&${q}`],
    ['GET', `/tasks/${task.uuid}?%74oken=${token}`],
    ['GET', `/tasks/3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b?${q}`],
    ['GET', `/tasks/${broken}?${q}`],
    ['HEAD', `/tasks/${task.uuid}?${q}`],
    ['POST', `/tasks/${task.uuid}/cancel?${q}`],
    ['GET', `/tasks/${task.uuid}/token?${q}`],
    ['GET', `/tasks/client.js?${q}`],
    ['GET', `/tasks/${task.uuid}/events?${q}`],
    ['HEAD', `/tasks/${task.uuid}/events?${q}`],
    ['GET', `/tasks/events?${q}`],
    ['GET', `/tasks/events/token?${q}`],
  ]
  const statuses: number[] = []
  for (const [method, url] of requests) {
    const payload = method === 'POST' && url.startsWith('/tasks?') ? (url.includes('bad') ? { task: 'nope' } : { task: 'steps', inputs: { steps: 1, delay: 1 } }) : undefined
    const response = await app.inject({ method: method as 'GET', url, payload, headers: { accept: 'text/event-stream' } })
    statuses.push(response.statusCode)
  }
  t.ok(statuses.includes(500), 'a 500 among them')
  t.ok(statuses.includes(404) && statuses.includes(400), 'a 404 and a 400 among them')
  // Real sockets for the upgrades (the multiplexed one with a socket token), and a real SSE stream.
  const socketToken = (await app.inject({ url: '/tasks/events/token' })).json().token as string
  for (const url of [`ws://${base}/tasks/${task.uuid}/events?${q}`, `ws://${base}/tasks/events?token=${socketToken}`]) {
    const { socket, closed } = follow(url)
    await once(socket, 'open')
    socket.close()
    await closed
  }
  await new Promise<void>((resolve, reject) => {
    http.get(`http://${base}/tasks/${task.uuid}/events?${q}`, (response) => {
      response.resume()
      response.on('end', resolve)
    }).on('error', reject)
  })

  const incoming = log.lines.filter(line => line.msg === 'incoming request').map(line => `${line.req?.url ?? ''}`)
  t.equal(incoming.length, requests.length + 4, 'every request was logged')
  t.same(incoming.filter(url => !/(token|%74oken)=\[redacted\]/.test(url)), ['/tasks/events/token'], 'each with token=[redacted] (but the one that minted the socket token, which had none)')
  t.ok(log.lines.some(line => line.level === 50 && line.req?.url?.includes('token=[redacted]') === true), 'the 500 is logged with the redacted URL')
  t.notOk(log.text().includes(token.split('.')[1] as string), 'the token appears nowhere in the log')
  t.notOk(log.text().includes(socketToken.split('.')[1] as string), 'nor the socket token')
})
