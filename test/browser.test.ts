import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { mkdir } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { chromium } from 'playwright-core'
import t from 'tap'
// @ts-expect-error the example is plain JavaScript, without type declarations
import { build } from '../examples/basic/app.js'
import { childExecArgv, pluginTimeout } from './helpers.js'

/*
 * The example page in a real browser: Debian's chromium, driven by playwright-core
 * (which never downloads a browser). .ci/run installs chromium when it is missing.
 */

const executablePath = '/usr/bin/chromium'
const output = new URL('./output/', import.meta.url)

t.test('the example page runs a task to 100% and cancels another, in Chromium', async (t) => {
  if (!existsSync(executablePath)) {
    t.fail(`no browser at ${executablePath}: install Debian's chromium (apt-get install -y chromium)`)
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'task-api-browser-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const database = join(dir, 'tasks.db')
  const app: FastifyInstance = await build({ logger: false, database, fastify: { pluginTimeout }, taskApi: { concurrency: 2, execArgv: childExecArgv } })
  t.teardown(() => app.close())
  const upgrades: string[] = []
  app.server.on('upgrade', (request) => upgrades.push(request.url ?? ''))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo

  const browser = await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 800, height: 700 } })
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  await mkdir(output, { recursive: true })

  await page.goto(`http://127.0.0.1:${port}/`)
  await page.fill('#seconds', '2')
  await page.click('#run')
  await page.waitForFunction(() => document.getElementById('result')?.textContent !== '')
  t.equal(await page.textContent('#result'), 'Result: waited 2 seconds')
  t.equal(await page.textContent('#percent'), '100%', 'the bar reached 100%')
  t.same(await page.$eval('#bar', (bar) => [(bar as HTMLProgressElement).value, (bar as HTMLProgressElement).max]), [2, 2])
  t.same(await page.$$eval('#messages li', (items) => items.map(item => item.textContent)), ['waited 1 of 2 seconds', 'waited 2 of 2 seconds'])
  t.equal(await page.textContent('#status'), 'Status: succeeded')
  t.ok(upgrades.some(url => /^\/tasks\/[0-9a-f-]+\/events$/.test(url)), 'the page followed the task over a WebSocket')
  const succeeded = fileURLToPath(new URL('browser-succeeded.png', output))
  await page.screenshot({ path: succeeded, fullPage: true })
  t.comment(`screenshot: ${succeeded}`)

  await page.fill('#seconds', '60')
  await page.click('#run')
  await page.waitForFunction(() => document.querySelectorAll('#messages li').length > 0)
  t.equal(await page.textContent('#status'), 'Status: running')
  t.equal(await page.isEnabled('#cancel'), true)
  await page.click('#cancel')
  await page.waitForFunction(() => document.getElementById('result')?.textContent !== '')
  t.equal(await page.textContent('#result'), 'Cancelled')
  t.equal(await page.textContent('#status'), 'Status: cancelled')
  t.equal(await page.isEnabled('#run'), true, 'Run is available again')
  const followed = upgrades.map(url => /^\/tasks\/([0-9a-f-]+)\/events/.exec(url)?.[1]).filter(uuid => uuid !== undefined)
  const second = await app.tasks.get(followed.at(-1) as string)
  t.equal(second?.task, 'wait')
  t.equal(second?.status, 'cancelled', 'the server cancelled the task the page followed')
  const screenshot = fileURLToPath(new URL('browser-cancelled.png', output))
  await page.screenshot({ path: screenshot, fullPage: true })
  t.comment(`screenshot: ${screenshot}`)

  // The example keeps its tasks in SQLite: restarted on the same file, the page shows the last task again.
  await app.close()
  const restarted: FastifyInstance = await build({ logger: false, database, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv } })
  t.teardown(() => restarted.close())
  await restarted.listen({ port: 0, host: '127.0.0.1' })
  await page.goto(`http://127.0.0.1:${(restarted.server.address() as AddressInfo).port}/`)
  await page.waitForFunction(() => document.getElementById('result')?.textContent !== '')
  t.equal(await page.textContent('#status'), 'Last task: cancelled', 'after a restart the page shows the last task')
  t.equal(await page.textContent('#result'), 'Cancelled')
  const restart = fileURLToPath(new URL('browser-restarted.png', output))
  await page.screenshot({ path: restart, fullPage: true })
  t.comment(`screenshot: ${restart}`)

  t.same(errors, [], 'no error in the page')
})
