import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
// @ts-expect-error the examples are plain JavaScript, without type declarations
import { build as buildCookie } from '../examples/auth/cookie.js'
import { build, childExecArgv, fixture, untilRunning } from './helpers.js'

/*
 * Submit and cancel refuse pages of other sites, as WebSocket upgrades do: a browser sends
 * its cookies with a cross-site request whatever SameSite says for same-site subdomains
 * (and older browsers ignore it), so a cookie session alone would let any page act as the
 * user. Requests go over a real socket with the headers Chromium sends.
 */

interface Answer { status: number, body: { code?: string, message?: string, uuid?: string, status?: string } }

function send (port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const sent = body === undefined ? { 'content-length': '0', ...headers } : { 'content-type': 'application/json', ...headers }
    const request = httpRequest({ host: '127.0.0.1', port, method, path, headers: sent }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text === '' ? {} : JSON.parse(text) }))
    })
    request.on('error', reject)
    request.end(body)
  })
}

/** What Chromium sends with `fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include' })` from a page of `origin`. */
const noCorsFetch = (origin: string, site: string) => ({
  origin,
  'sec-fetch-site': site,
  'sec-fetch-mode': 'no-cors',
  'sec-fetch-dest': 'empty',
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
})

/** What Chromium sends with `fetch(url, { method: 'POST', credentials: 'include', ... })` from a page of `origin` (after any preflight). */
const corsFetch = (origin: string, site: string) => ({
  origin,
  'sec-fetch-site': site,
  'sec-fetch-mode': site === 'same-origin' ? 'same-origin' : 'cors',
  'sec-fetch-dest': 'empty',
})

async function listening (t: Test, app: FastifyInstance): Promise<number> {
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  return (app.server.address() as AddressInfo).port
}

const stubborn = JSON.stringify({ task: 'stubborn' })
// Below, only the routes matter, not where tasks run: the inline runner starts at once.
const inline = { tasks: [fixture('control.ts')], runner: 'inline' as const }

t.test('with a cookie session, another site cannot cancel or submit; the app\'s own pages can', async (t) => {
  const app: FastifyInstance = await buildCookie({ logger: false, taskApi: { concurrency: 1, execArgv: childExecArgv } })
  await app.ready() // the example's own Fastify() has the default pluginTimeout
  const port = await listening(t, app)
  const own = `http://127.0.0.1:${port}`
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ann' } })
  const cookie = (login.headers['set-cookie'] as string).split(';')[0] as string

  const created = await send(port, 'POST', '/tasks', { ...corsFetch(own, 'same-origin'), cookie }, JSON.stringify({ task: 'wait', inputs: { seconds: 60 } }))
  t.equal(created.status, 201, 'a page of the app submits')
  const uuid = created.body.uuid as string
  await untilRunning(app, uuid)

  for (const [name, headers] of [
    ['a no-cors fetch from another site', noCorsFetch('https://evil.example', 'cross-site')],
    ['a form post from another site', { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'content-type': 'text/plain' }],
    ['a page of a sibling subdomain (same-site: SameSite=Lax lets the cookie through)', noCorsFetch('http://evil.127.0.0.1', 'same-site')],
    ['a page whose origin is hidden ("null": sandboxed frame, no-referrer)', noCorsFetch('null', 'cross-site')],
    ['a cross-site request without Origin', { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' }],
  ] as const) {
    const cancel = await send(port, 'POST', `/tasks/${uuid}/cancel`, { ...headers, cookie })
    t.equal(cancel.status, 403, `cancel: ${name}`)
    t.equal(cancel.body.code, 'FST_TASK_API_ORIGIN_FORBIDDEN', `cancel: ${name}`)
  }
  t.equal((await app.tasks.get(uuid))?.status, 'running', 'the task still runs')

  const forged = await send(port, 'POST', '/tasks', { ...corsFetch('https://evil.example', 'cross-site'), cookie }, JSON.stringify({ task: 'wait', inputs: { seconds: 1 } }))
  t.equal(forged.status, 403, 'submit from another site')
  t.equal(forged.body.message, 'requests from https://evil.example are not allowed here (see allowedOrigins)')
  const listed = (await send(port, 'GET', '/tasks', { cookie })).body as { tasks: Array<{ uuid: string }> }
  t.same(listed.tasks.map(task => task.uuid), [uuid], 'nothing was created')

  const read = await send(port, 'GET', `/tasks/${uuid}`, { ...noCorsFetch('https://evil.example', 'cross-site'), cookie })
  t.equal(read.status, 200, 'GET routes are not affected (what a page may read is CORS\'s business)')

  const cancelled = await send(port, 'POST', `/tasks/${uuid}/cancel`, { ...corsFetch(own, 'same-origin'), cookie })
  t.equal(cancelled.status, 200, 'a page of the app cancels')
  t.equal((await app.tasks.wait(uuid)).status, 'cancelled')
})

t.test('clients that are not browsers (no Origin, no Sec-Fetch-Site) pass', async (t) => {
  const app = await build(t, inline)
  const port = await listening(t, app)
  const created = await send(port, 'POST', '/tasks', { 'user-agent': 'curl/8.5.0' }, stubborn)
  t.equal(created.status, 201)
  t.equal((await send(port, 'POST', `/tasks/${created.body.uuid as string}/cancel`, { 'user-agent': 'curl/8.5.0' })).status, 200)
})

t.test('same-origin pages pass, also behind a proxy that rewrites Host', async (t) => {
  const app = await build(t, inline)
  const port = await listening(t, app)
  t.equal((await send(port, 'POST', '/tasks', corsFetch(`http://127.0.0.1:${port}`, 'same-origin'), stubborn)).status, 201, 'Origin is the Host')
  // The browser saw https://app.example.com; the proxy forwarded Host: 127.0.0.1:port.
  t.equal((await send(port, 'POST', '/tasks', corsFetch('https://app.example.com', 'same-origin'), stubborn)).status, 201, 'the browser says same-origin')
  const older = { origin: `http://127.0.0.1:${port}` }
  t.equal((await send(port, 'POST', '/tasks', older, stubborn)).status, 201, 'a browser that sends no Sec-Fetch-Site, from the same origin')
  t.equal((await send(port, 'POST', '/tasks', { ...older, origin: 'https://evil.example' }, stubborn)).status, 403, 'and from another one')
})

t.test('allowedOrigins lists the other sites whose pages may submit and cancel; "*" lets any', async (t) => {
  const app = await build(t, { ...inline, allowedOrigins: ['https://app.example'] })
  const port = await listening(t, app)
  const created = await send(port, 'POST', '/tasks', corsFetch('https://app.example', 'cross-site'), stubborn)
  t.equal(created.status, 201, 'a listed origin')
  t.equal((await send(port, 'POST', '/tasks', corsFetch('https://other.example', 'cross-site'), stubborn)).status, 403, 'one not listed')
  t.equal((await send(port, 'POST', '/tasks', corsFetch(`http://127.0.0.1:${port}`, 'same-origin'), stubborn)).status, 201, 'the own origin still')
  t.equal((await send(port, 'POST', `/tasks/${created.body.uuid as string}/cancel`, noCorsFetch('https://app.example', 'cross-site'))).status, 200, 'cancel from a listed origin')

  const any = await build(t, { ...inline, allowedOrigins: '*' })
  const anyPort = await listening(t, any)
  t.equal((await send(anyPort, 'POST', '/tasks', corsFetch('https://other.example', 'cross-site'), stubborn)).status, 201, '"*"')
})
