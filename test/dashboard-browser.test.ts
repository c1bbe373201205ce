import { existsSync, readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page } from 'playwright-core'
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

const rowsOf = (page: Page) => page.locator('table[aria-label="Tasks"] tbody tr[data-uuid]')
const uuidsOn = async (page: Page): Promise<string[]> => await rowsOf(page).evaluateAll(rows => rows.map(row => row.getAttribute('data-uuid') ?? ''))

t.test('the dashboard: start from the form, watch, see the result, cancel, delete, 400 by its field, 250 tasks paged', async (t) => {
  if (!existsSync(executablePath)) {
    t.fail(`no browser at ${executablePath}: install Debian's chromium (apt-get install -y chromium)`)
    return
  }
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

  // Chromium logs each 4xx answer as an error: the one 400 above was on purpose.
  t.same(errors.filter(error => !/status of 400/.test(error)), [], 'no error in the page')
})

t.test('bearer tokens: asked once, kept for the session, only the user\'s own tasks', async (t) => {
  if (!existsSync(executablePath)) {
    t.fail(`no browser at ${executablePath}`)
    return
  }
  const app: FastifyInstance = await buildBearer({ logger: false, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 } })
  t.teardown(() => app.close())
  const base = await listening(app)
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
  await page.reload()
  await until('listed again without asking', async () => (await uuidsOn(page)).includes(bobs))
  t.equal(await signIn.count(), 0, 'not asked again in this session')
  t.notOk((await uuidsOn(page)).includes(alices))
  await screenshot(t, page, 'dashboard-bearer.png')
  t.same(errors.filter(error => !/401/.test(error)), [], 'no error in the page but the first 401')
})

t.test('cookie sessions: the page just works for the logged-in user', async (t) => {
  if (!existsSync(executablePath)) {
    t.fail(`no browser at ${executablePath}`)
    return
  }
  const app: FastifyInstance = await buildCookie({ logger: false, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200 } })
  t.teardown(() => app.close())
  const base = await listening(app)
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
