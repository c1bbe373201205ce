import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
// @ts-expect-error the example is plain JavaScript, without type declarations
import { build } from '../examples/basic/app.js'
import type { FastifyInstance } from 'fastify'
import { childExecArgv, pluginTimeout } from './helpers.js'

t.test('the basic example serves its page and runs the seed\'s wait task', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-example-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const app: FastifyInstance = await build({ logger: false, database: join(dir, 'tasks.db'), fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv } })
  t.teardown(() => app.close())
  const page = await app.inject('/')
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  t.match(page.body, /<button id="run"/)
  t.match(page.body, /<button id="cancel"/)
  t.match(page.body, /import \{ createClient \} from '\/tasks\/client\.js'/, 'the page uses the client the plugin serves')
  t.match(page.body, /client\.run\('wait', /)
  t.match(page.body, /<a id="dashboard" href="\/tasks\/dashboard">/, 'the page links to the dashboard')
  const dashboard = await app.inject('/tasks/dashboard')
  t.equal(dashboard.statusCode, 200, 'which the example serves')
  t.match(dashboard.body, /<table id="tasks" aria-label="Tasks">/)
  const script = await app.inject('/tasks/client.js')
  t.equal(script.statusCode, 200)
  t.match(script.headers['content-type'], /^text\/javascript/)

  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'wait', inputs: { seconds: '2' } } })
  t.equal(res.statusCode, 201)
  const done = await app.tasks.wait(res.json().uuid)
  t.equal(done.status, 'succeeded')
  t.same(done.outputs, { waited: 2 })
  t.equal(done.progress, 2)
  t.equal(done.target, 2)
  t.same(done.messages, ['waited 1 of 2 seconds', 'waited 2 of 2 seconds'])

  const bad = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'wait', inputs: { seconds: 0 } } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().message, 'inputs/seconds must be >= 1')
})
