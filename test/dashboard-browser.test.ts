import { existsSync, readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page, type Request } from 'playwright-core'
import t, { type Test } from 'tap'
// @ts-expect-error the example is plain JavaScript, without type declarations
import { build as buildBearer } from '../examples/auth/bearer.js'
// @ts-expect-error the example is plain JavaScript, without type declarations
import { build as buildCookie } from '../examples/auth/cookie.js'
import { build, childExecArgv, fixture, pluginTimeout, until } from './helpers.js'

/*
 * The dashboard in a real browser: Debian's chromium driven by playwright-core (which
 * never downloads one; .ci/run installs chromium when it is missing). Screenshots go to
 * test/output (the README shows them); axe-core checks the page's accessibility.
 */

const executablePath = '/usr/bin/chromium'
const output = new URL('./output/', import.meta.url)
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

async function browser (t: Test): Promise<Browser> {
  const launched = await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  })
  t.teardown(() => launched.close())
  return launched
}

/** A page that records its errors and the WebSocket URLs it opens. */
async function open (t: Test, from: Browser, url: string): Promise<{ page: Page, errors: string[], sockets: string[] }> {
  const context = await from.newContext({ viewport: { width: 1280, height: 900 } })
  const page = await context.newPage()
  const errors: string[] = []
  const sockets: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  page.on('websocket', (socket) => sockets.push(socket.url()))
  await page.goto(url)
  return { page, errors, sockets }
}

async function listening (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

async function screenshot (t: Test, page: Page, name: string): Promise<void> {
  await mkdir(output, { recursive: true })
  const path = fileURLToPath(new URL(name, output))
  await page.screenshot({ path, fullPage: true })
  t.comment(`screenshot: ${path}`)
}

/** axe-core's serious and critical violations on the page as it is. */
async function violations (page: Page): Promise<string[]> {
  // Evaluated by the browser's debugger protocol: the page's CSP (no inline script) does not apply.
  await page.evaluate(axeSource)
  const result = await page.evaluate(async () => {
    const axe = (window as unknown as { axe: { run: (context: Document, options: object) => Promise<{ violations: Array<{ id: string, impact: string, help: string, nodes: Array<{ target: string[] }> }> }> } }).axe
    return await axe.run(document, { resultTypes: ['violations'] })
  })
  return result.violations
    .filter(violation => violation.impact === 'serious' || violation.impact === 'critical')
    .map(violation => `${violation.id} (${violation.impact}): ${violation.help} at ${violation.nodes.map(node => node.target.join(' ')).join(', ')}`)
}

/** What the page's sockets received, as `watchSockets` notes it in the page. */
interface Watched { seenFrames: string[], openSockets: WebSocket[], holdSockets: boolean }

/**
 * An init script: notes every frame the page's sockets receive once the page's own
 * handler has run (a later turn of the event loop), and, while `holdSockets` is set,
 * fails new sockets at once, as an unreachable server would, without an error logged.
 */
function watchSockets (): void {
  const w = window as unknown as Watched & { WebSocket: typeof WebSocket }
  const Native = WebSocket
  w.seenFrames = []
  w.openSockets = []
  w.holdSockets = false
  w.WebSocket = function (url: string | URL, protocols?: string | string[]) {
    if (w.holdSockets) {
      const refused = new EventTarget()
      setTimeout(() => refused.dispatchEvent(new Event('close')), 50)
      return refused
    }
    const socket = new Native(url, protocols)
    w.openSockets.push(socket)
    socket.addEventListener('message', (event) => { setTimeout(() => w.seenFrames.push(String(event.data))) })
    return socket
  } as unknown as typeof WebSocket
}

/** The frames the page's sockets received and handled so far (see `watchSockets`). */
async function framesOf (page: Page): Promise<Array<{ type?: string, uuid?: string, message?: string }>> {
  return (await page.evaluate(() => (window as unknown as Watched).seenFrames)).map(frame => JSON.parse(frame))
}
const heard = async (page: Page, type: string, uuid?: string): Promise<boolean> =>
  (await framesOf(page)).some(frame => frame.type === type && (uuid === undefined || frame.uuid === uuid))

/** False (and the test failed, saying why) when Debian's chromium is not installed. */
function hasBrowser (t: Test): boolean {
  if (existsSync(executablePath)) return true
  t.fail(`no browser at ${executablePath}: install Debian's chromium (apt-get install -y chromium)`)
  return false
}

/** One of the auth examples (examples/auth), listening; closed when the test ends. */
async function example (t: Test, build: (options: object) => Promise<FastifyInstance>): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build({ logger: false, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 } })
  t.teardown(() => app.close())
  return { app, base: await listening(app) }
}

const rowsOf = (page: Page) => page.locator('table[aria-label="Tasks"] tbody tr[data-uuid]')
const uuidsOn = async (page: Page): Promise<string[]> => await rowsOf(page).evaluateAll(rows => rows.map(row => row.getAttribute('data-uuid') ?? ''))

t.test('the dashboard: start from the form, watch, see the result, cancel, delete, 400 by its field, 250 tasks paged', async (t) => {
  if (!hasBrowser(t)) return
  const app = await build(t, { tasks: [fixture('dashboard.ts')], concurrency: 2, dashboard: true, list: true, shutdownTimeout: 200 })
  const base = await listening(app)
  // 250 finished tasks to page through, one that failed, one with outputs to fold.
  const made = await Promise.all(Array.from({ length: 250 }, async () => (await app.tasks.submit('noop', {})).uuid))
  for (const uuid of made) await app.tasks.wait(uuid)
  const failed = (await app.tasks.submit('fails', {})).uuid
  const big = (await app.tasks.submit('big', {})).uuid
  await app.tasks.wait(failed)
  await app.tasks.wait(big)

  const { page, errors, sockets } = await open(t, await browser(t), `${base}/tasks/dashboard`)
  await until('the first page is shown', async () => (await rowsOf(page).count()) === 50)
  t.same((await uuidsOn(page)).slice(0, 2), [big, failed], 'newest first')

  await t.test('paging through every task once', async (t) => {
    const seen: string[] = []
    let pages = 0
    const older = page.getByRole('button', { name: 'Older' })
    for (;;) {
      seen.push(...await uuidsOn(page))
      pages++
      if (await older.isDisabled()) break
      const first = (await uuidsOn(page))[0]
      await older.click()
      await until('the next page is shown', async () => (await uuidsOn(page))[0] !== first)
    }
    t.equal(pages, 6, '252 tasks, 50 a page')
    t.equal(seen.length, 252)
    t.equal(new Set(seen).size, 252, 'none twice')
    t.same(new Set(seen), new Set([...made, failed, big]), 'none missed')
    await page.getByRole('button', { name: 'Newer' }).click()
    await until('back one page', async () => (await uuidsOn(page)).length === 50)
    t.same((await uuidsOn(page)).length, 50)
  })

  // Back to the first page.
  await page.goto(`${base}/tasks/dashboard`)
  await until('the first page is shown', async () => (await rowsOf(page).count()) === 50)
  t.same(await violations(page), [], 'axe: no serious or critical violation on the table')
  await screenshot(t, page, 'dashboard-table.png')

  const form = page.getByRole('form', { name: 'Start a task' })
  const detail = page.getByRole('region', { name: 'Task detail' })

  await t.test('start a task from the form and watch its bar reach 100%', async (t) => {
    await form.getByLabel('Task').selectOption('count')
    await form.getByLabel('to', { exact: true }).fill('6')
    await form.getByLabel(/^every/).fill('250')
    await form.getByLabel(/^label/).fill('sheep')
    const percents = new Set<string>()
    await form.getByRole('button', { name: 'Start' }).click()
    await detail.waitFor()
    const bar = detail.getByRole('progressbar')
    // Watch the bar move: it reports several values on the way, then 100.
    await until('the task succeeded', async () => {
      percents.add(await bar.getAttribute('aria-valuenow') ?? '')
      return /succeeded/.test(await detail.textContent() ?? '')
    }, 20_000)
    t.equal(await bar.getAttribute('aria-valuenow'), '100', 'the bar reached 100%')
    t.match(await bar.textContent(), /100%/)
    t.ok(percents.size >= 3, `the bar moved through several values live: ${[...percents].join(', ')}`)
    const text = await detail.textContent() ?? ''
    t.match(text, 'sheep reached 6', 'the outputs are shown')
    t.match(text, 'sheep: 6 of 6', 'the messages are shown')
    const uuid = /#\/task\/([0-9a-f-]{36})/.exec(page.url())?.[1]
    t.ok(uuid, 'the detail has its own URL')
    const record = await app.tasks.get(uuid as string)
    t.match(record, { status: 'succeeded', outputs: { counted: 6, report: 'sheep reached 6' } })
    t.ok(sockets.some(url => url.endsWith('/tasks/events')), 'followed over the multiplexed socket')
    t.same(await violations(page), [], 'axe: no serious or critical violation on the detail')
    await screenshot(t, page, 'dashboard-detail.png')
  })

  await t.test('the server\'s 400 is shown next to the field it names', async (t) => {
    await page.goto(`${base}/tasks/dashboard`)
    await form.getByLabel('Task').selectOption('count')
    await form.getByLabel('to', { exact: true }).fill('3')
    // The form cannot check this one: a nested object, typed as JSON.
    const options = form.getByLabel(/^options/)
    await options.fill('{"depth": "deep"}')
    const before = (await app.tasks.list({ limit: 1000 })).tasks.length
    await form.getByRole('button', { name: 'Start' }).click()
    await until('the field is marked', async () => await options.getAttribute('aria-invalid') === 'true')
    const described = await options.getAttribute('aria-describedby')
    t.ok(described, 'the field points at its error')
    const message = await page.locator(`[id="${described}"]`).textContent()
    t.match(message, /depth must be integer/, `the server's message by the field: ${message}`)
    t.equal((await app.tasks.list({ limit: 1000 })).tasks.length, before, 'nothing was created')
    await screenshot(t, page, 'dashboard-400.png')
  })

  await t.test('cancel a running task, then delete it', async (t) => {
    await page.goto(`${base}/tasks/dashboard`)
    await form.getByLabel('Task').selectOption('count')
    await form.getByLabel('to', { exact: true }).fill('100')
    await form.getByLabel(/^every/).fill('1000')
    await form.getByRole('button', { name: 'Start' }).click()
    await detail.waitFor()
    await until('running', async () => /running/.test(await detail.textContent() ?? ''))
    const uuid = /#\/task\/([0-9a-f-]{36})/.exec(page.url())?.[1] as string
    await detail.getByRole('button', { name: 'Cancel' }).click()
    await until('cancelled', async () => /cancelled/.test(await detail.textContent() ?? ''))
    t.equal((await app.tasks.get(uuid))?.status, 'cancelled')
    t.ok(await detail.getByRole('button', { name: 'Cancel' }).isDisabled(), 'a finished task cannot be cancelled')
    await detail.getByRole('button', { name: 'Delete' }).click()
    // An inline confirmation, then the list without it.
    await detail.getByRole('button', { name: /delete/i }).last().click()
    await until('deleted', async () => await app.tasks.get(uuid) === undefined)
    await until('back on the list', async () => (await rowsOf(page).count()) > 0)
    t.notOk((await uuidsOn(page)).includes(uuid), 'its row is gone')
  })

  await t.test('large outputs are folded; a failure shows its error; search by uuid', async (t) => {
    await page.goto(`${base}/tasks/dashboard#/task/${big}`)
    await detail.waitFor()
    const folded = detail.locator('details')
    t.equal(await folded.count(), 1, 'the outputs are folded')
    t.notOk(await folded.getAttribute('open'), 'closed until asked')
    await page.goto(`${base}/tasks/dashboard`)
    await page.getByLabel('Search by uuid').fill(failed)
    await page.getByLabel('Search by uuid').press('Enter')
    await detail.waitFor()
    t.match(await detail.textContent(), 'this task always fails', 'the error')
  })

  await t.test('filters and charts', async (t) => {
    await page.goto(`${base}/tasks/dashboard`)
    await until('the first page is shown', async () => (await rowsOf(page).count()) > 0)
    await page.getByRole('search').getByLabel('Status').selectOption('failed')
    await until('only failed tasks', async () => {
      const uuids = await uuidsOn(page)
      return uuids.length === 1 && uuids[0] === failed
    })
    t.pass('status filter')
    await page.getByRole('search').getByLabel('Status').selectOption('')
    await page.getByRole('search').getByLabel('Task').selectOption('big')
    await until('only big', async () => {
      const uuids = await uuidsOn(page)
      return uuids.length === 1 && uuids[0] === big
    })
    t.pass('task filter')
    const perMinute = page.locator('figure', { hasText: 'Tasks finished per minute' })
    const durations = page.locator('figure', { hasText: 'Duration by task' })
    await until('the charts are drawn', async () => (await perMinute.locator('svg rect').count()) > 0 && (await durations.locator('svg rect').count()) > 0)
    t.match(await perMinute.locator('svg').getAttribute('aria-label'), /\d/, 'the chart says what it shows')
    await screenshot(t, page, 'dashboard-charts.png')
  })

  await t.test('tasks created elsewhere come on top of page 1, live and without a reload, as the filters let them', async (t) => {
    await page.addInitScript(watchSockets)
    await page.goto(`${base}/tasks/dashboard`)
    await until('the page watches for new tasks', () => heard(page, 'watching'))
    await until('the first page is shown', async () => (await rowsOf(page).count()) === 50 && (await page.locator('#tasks[aria-busy]').count()) === 0)
    // Nothing may read the page again or reload it: the row can only come from the feed.
    await page.evaluate(() => { (window as unknown as { sameDocument: boolean }).sameDocument = true })
    let navigations = 0
    let reads = 0
    const navigated = (): void => { navigations++ }
    const requested = (request: Request): void => { if (new URL(request.url()).pathname === '/tasks') reads++ }
    page.on('framenavigated', navigated)
    page.on('request', requested)
    t.teardown(() => {
      page.off('framenavigated', navigated)
      page.off('request', requested)
    })

    const { uuid } = await app.tasks.submit('count', { to: 3, every: 200 })
    await until('its row is on top', async () => (await uuidsOn(page))[0] === uuid)
    const row = page.locator(`tr[data-uuid="${uuid}"]`)
    await until('it succeeded, live', async () => /succeeded/.test(await row.textContent() ?? ''), 20_000)
    t.ok(await heard(page, 'created', uuid), 'the socket told of it')
    t.equal(await rowsOf(page).count(), 51, 'on top of the 50 read: none dropped from the bottom')
    t.equal(reads, 0, 'the list was not read again')
    t.equal(navigations, 0, 'no navigation')
    t.equal(await page.evaluate(() => (window as unknown as { sameDocument?: boolean }).sameDocument), true, 'the same document: no reload')

    await page.getByRole('search').getByLabel('Status').selectOption('failed')
    await until('only failed tasks', async () => {
      const uuids = await uuidsOn(page)
      return uuids.length === 1 && uuids[0] === failed && (await page.locator('#tasks[aria-busy]').count()) === 0
    })
    const pending = (await app.tasks.submit('count', { to: 3, every: 200 })).uuid
    await until('the page heard of it', () => heard(page, 'created', pending))
    t.same(await uuidsOn(page), [failed], 'a new (pending) task is not shown under the failed filter')
    await app.tasks.wait(pending)
  })

  await t.test('after a drop, page 1 is read again once the socket watches again: nothing created meanwhile is missed', async (t) => {
    await page.getByRole('search').getByLabel('Status').selectOption('')
    await until('page 1 of every task', async () => (await rowsOf(page).count()) === 50 && (await page.locator('#tasks[aria-busy]').count()) === 0)
    const watchings = (await framesOf(page)).filter(frame => frame.type === 'watching').length
    // The socket drops, and the next ones fail until the task below exists.
    await page.evaluate(() => {
      const w = window as unknown as Watched
      w.holdSockets = true
      w.openSockets.at(-1)?.close()
    })
    await until('the page knows it is offline', async () => await page.locator('#live-on').isHidden())
    const missed = (await app.tasks.submit('noop', {})).uuid
    await app.tasks.wait(missed)
    t.notOk((await uuidsOn(page)).includes(missed), 'not heard of while away')
    await page.evaluate(() => { (window as unknown as Watched).holdSockets = false })
    await until('watching again', async () => (await framesOf(page)).filter(frame => frame.type === 'watching').length > watchings, 30_000)
    await until('page 1 read again, the missed task on top', async () => (await uuidsOn(page))[0] === missed)
    t.pass('the missed task is shown')
  })

  await t.test('page 1 with 100 live rows and the detail: the newest rows are followed, under the socket\'s 100 subscriptions; past 50 new rows a button reads the page again', async (t) => {
    // Long tasks that stay pending (two run): every row stays live until they are cancelled.
    const long = async (): Promise<string> => (await app.tasks.submit('count', { to: 100, every: 2000 })).uuid
    const older: string[] = []
    const opened = await long()
    for (let i = 0; i < 50; i++) older.push(await long())
    const newer: string[] = []
    t.teardown(async () => { await Promise.all([opened, ...older, ...newer].map(uuid => app.tasks.cancel(uuid))) })
    // A new document (from the same URL, only the hash would change).
    await page.goto('about:blank')
    await page.goto(`${base}/tasks/dashboard#/task/${opened}`)
    await detail.waitFor()
    await until('the page watches for new tasks', () => heard(page, 'watching'))
    await until('page 1: 50 live rows', async () => (await uuidsOn(page)).join() === [...older].reverse().join() && (await page.locator('#tasks[aria-busy]').count()) === 0)
    for (let i = 0; i < 51; i++) newer.push(await long())
    const more = page.getByRole('button', { name: '1 new task — show' })
    await until('50 rows added, then the button', async () => (await rowsOf(page).count()) === 100 && await more.isVisible(), 20_000)
    t.same(await uuidsOn(page), [...newer.slice(0, 50).reverse(), ...[...older].reverse()], 'the 50 newest on top of those read, none dropped')
    // The subscriptions are answered in order: once the newest are answered, every refusal would be in.
    await until('the newest rows are answered', async () => {
      const frames = await framesOf(page)
      return newer.slice(0, 50).every(uuid => frames.some(frame => (frame.type === 'snapshot' || frame.type === 'error') && frame.uuid === uuid))
    }, 20_000)
    const refusals = (await framesOf(page)).filter(frame => frame.type === 'error')
    t.same(refusals, [], 'no subscription refused: 85 rows and the detail are followed, not 101')
    await more.click()
    await until('page 1 read again', async () => (await uuidsOn(page))[0] === newer[50] && (await rowsOf(page).count()) === 50)
    t.ok(await more.isHidden(), 'the button is gone')
  })

  await t.test('a link with a broken escape in its hash: the page still works', async (t) => {
    const before = errors.length
    await page.goto(`${base}/tasks/dashboard#/task/%E0%A4%A`)
    await until('the list is shown', async () => (await rowsOf(page).count()) > 0)
    await until('the detail says so', async () => /No task with this uuid/.test(await detail.textContent() ?? ''))
    t.same(errors.slice(before).filter(error => !/status of 404/.test(error)), [], 'no error in the page')
  })

  // Chromium logs each 4xx answer as an error: the one 400 above was on purpose.
  t.same(errors.filter(error => !/status of 40[04]/.test(error)), [], 'no error in the page')
})

t.test('bearer tokens: asked once, kept for the session, only the user\'s own tasks', async (t) => {
  if (!hasBrowser(t)) return
  const { app, base } = await example(t, buildBearer)
  const alices = (await app.tasks.submit('wait', { seconds: 1 }, { owner: 'alice' })).uuid
  const bobs = (await app.tasks.submit('wait', { seconds: 2 }, { owner: 'bob' })).uuid
  const { page, errors, sockets } = await open(t, await browser(t), `${base}/tasks/dashboard`)
  const signIn = page.getByRole('form', { name: 'Sign in' })
  await signIn.waitFor()
  t.same(await violations(page), [], 'axe: no serious or critical violation on the sign-in form')
  await signIn.getByLabel('Bearer token').fill('demo-bob')
  await signIn.getByRole('button', { name: 'Use token' }).click()
  await until('bob\'s task is listed', async () => (await uuidsOn(page)).includes(bobs))
  t.same(await uuidsOn(page), [bobs], 'only his own: alice\'s never appears')
  t.equal(await page.evaluate(() => sessionStorage.getItem('fastify-task-api:token')), 'demo-bob', 'kept in sessionStorage')
  const row = rowsOf(page).first()
  await until('his task finished, live', async () => /succeeded/.test(await row.textContent() ?? ''), 20_000)
  t.ok(sockets.some(url => /\/tasks\/events\?token=/.test(url)), 'the socket opened with a socket token')
  await page.addInitScript(watchSockets)
  await page.reload()
  await until('listed again without asking', async () => (await uuidsOn(page)).includes(bobs))
  t.equal(await signIn.count(), 0, 'not asked again in this session')
  t.notOk((await uuidsOn(page)).includes(alices))
  // New tasks: bob's comes on top over the token's socket; alice's is never told of.
  await until('the page watches for new tasks', () => heard(page, 'watching'))
  const alicesNew = (await app.tasks.submit('wait', { seconds: 1 }, { owner: 'alice' })).uuid
  const bobsNew = (await app.tasks.submit('wait', { seconds: 1 }, { owner: 'bob' })).uuid
  await until('bob\'s new task on top', async () => (await uuidsOn(page))[0] === bobsNew)
  t.notOk(await heard(page, 'created', alicesNew), 'alice\'s new task is not told to bob')
  t.same(await uuidsOn(page), [bobsNew, bobs], 'only his own')
  await screenshot(t, page, 'dashboard-bearer.png')
  t.same(errors.filter(error => !/401/.test(error)), [], 'no error in the page but the first 401')
})

t.test('cookie sessions: the page just works for the logged-in user', async (t) => {
  if (!hasBrowser(t)) return
  const { app, base } = await example(t, buildCookie)
  const others = (await app.tasks.submit('wait', { seconds: 1 }, { owner: 'mallory' })).uuid
  const { page, errors, sockets } = await open(t, await browser(t), 'about:blank')
  // The browser context's request API shares its cookie jar with the page.
  const login = await page.request.post(`${base}/login`, { data: { user: 'ann' } })
  t.equal(login.status(), 200)
  await page.goto(`${base}/tasks/dashboard`)
  const form = page.getByRole('form', { name: 'Start a task' })
  await form.getByLabel('Task').selectOption('wait')
  await form.getByLabel(/^seconds/).fill('1')
  await form.getByRole('button', { name: 'Start' }).click()
  const detail = page.getByRole('region', { name: 'Task detail' })
  await detail.waitFor()
  await until('succeeded', async () => /succeeded/.test(await detail.textContent() ?? ''), 20_000)
  const mine = (await app.tasks.list({})).tasks.filter(task => task.uuid !== others)
  t.equal(mine.length, 1)
  await page.goto(`${base}/tasks/dashboard`)
  await until('listed', async () => (await uuidsOn(page)).length === 1)
  t.same(await uuidsOn(page), [mine[0]?.uuid], 'only ann\'s task, not mallory\'s')
  t.ok(sockets.some(url => url.endsWith('/tasks/events')), 'the socket opened with the cookie, no token')
  t.equal(await page.getByRole('form', { name: 'Sign in' }).count(), 0, 'never asked for a token')
  t.same(errors, [], 'no error in the page')
})
