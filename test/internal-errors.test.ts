import { Writable } from 'node:stream'
import Fastify from 'fastify'
import t from 'tap'
import taskApi, { FST_TASK_API_RUNNER_CLOSED, MemoryStore } from '../dist/index.js'
import type { ListPage, TaskRecord } from '../dist/index.js'
import { build, fixture } from './helpers.js'

// A 5xx from the plugin's routes never carries an internal message (a store's, or a
// callback's that threw): the client gets a generic message and the error's code, the
// server log gets the detail, and the app's own error handler still runs.

const tasks = [fixture('basic.ts')]
// No task runs in this file (every request fails before one would): the inline runner.
const runner = 'inline' as const
const someUuid = '7d5b1a7e-0000-4000-8000-000000000000'

/** A store whose reads fail, as a database that is down would. */
class FailingStore extends MemoryStore {
  override async get (): Promise<TaskRecord | undefined> {
    throw Object.assign(new Error('secret db detail: password=hunter2'), { code: 'EDBDOWN' })
  }

  override async list (): Promise<ListPage> {
    throw new Error('secret db detail in list')
  }
}

function logCapture () {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _encoding, done) { lines.push(String(chunk)); done() } })
  return { lines, logger: { level: 'info', stream } }
}

t.test('a store that throws: 500 with a generic message and its code, the detail only in the log', async (t) => {
  const { lines, logger } = logCapture()
  const app = await build(t, { tasks, runner, store: new FailingStore(), list: true }, { logger })
  for (const [method, url] of [['GET', `/tasks/${someUuid}`], ['POST', `/tasks/${someUuid}/cancel`], ['GET', `/tasks/${someUuid}/token`]] as const) {
    const res = await app.inject({ method, url })
    t.equal(res.statusCode, 500, url)
    t.same(res.json(), { statusCode: 500, code: 'EDBDOWN', error: 'Internal Server Error', message: 'Internal Server Error' }, url)
    t.notMatch(res.body, /secret|hunter2/, url)
  }
  const list = await app.inject('/tasks')
  t.equal(list.statusCode, 500)
  t.same(list.json(), { statusCode: 500, code: 'FST_TASK_API_INTERNAL', error: 'Internal Server Error', message: 'Internal Server Error' }, 'FST_TASK_API_INTERNAL when the error has no code')
  t.ok(lines.some(line => line.includes('secret db detail: password=hunter2')), 'the detail is in the server log')
  t.ok(lines.some(line => line.includes('secret db detail in list')), 'the detail is in the server log')
})

t.test('an authorize or owner callback that throws: 500 with a generic message', async (t) => {
  const { lines, logger } = logCapture()
  const app = await build(t, {
    tasks,
    runner,
    authorize: () => { throw new Error('secret policy detail') },
  }, { logger })
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(res.statusCode, 500)
  t.equal(res.json().message, 'Internal Server Error')
  t.notMatch(res.body, /secret/)
  t.ok(lines.some(line => line.includes('secret policy detail')), 'the detail is in the server log')

  const owned = await build(t, { tasks, runner, owner: async () => { throw new Error('secret session detail') } })
  const again = await owned.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(again.statusCode, 500)
  t.notMatch(again.body, /secret/)
  t.equal((await owned.inject('/tasks')).json().message, 'Internal Server Error', 'the list too')

  const thrower = await build(t, { tasks, runner, authorize: () => { throw 'secret thrown string' as unknown as Error } })
  const odd = await thrower.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.same(odd.json(), { statusCode: 500, code: 'FST_TASK_API_INTERNAL', error: 'Internal Server Error', message: 'Internal Server Error' }, 'a thrown string too')
})

t.test('the status a callback gives is kept; client errors (4xx) keep their message', async (t) => {
  const app = await build(t, {
    tasks,
    runner,
    authorize: (_request, { task }) => {
      if (task === 'sleep') throw Object.assign(new Error('secret upstream detail'), { statusCode: 503, code: 'EUPSTREAM' })
      throw Object.assign(new Error('you may not run this today'), { statusCode: 403 })
    },
  })
  const unavailable = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'sleep', inputs: { ms: 1 } } })
  t.same(unavailable.json(), { statusCode: 503, code: 'EUPSTREAM', error: 'Service Unavailable', message: 'Service Unavailable' })
  const forbidden = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.equal(forbidden.statusCode, 403)
  t.equal(forbidden.json().message, 'you may not run this today', 'the app\'s own 4xx message reaches its client')
  const missing = await app.inject(`/tasks/${someUuid}`)
  t.equal(missing.json().message, `task ${someUuid} not found`, 'the plugin\'s own 4xx are untouched')
})

t.test('the plugin\'s own 5xx codes keep their message: it says nothing internal', async (t) => {
  class ClosedStore extends MemoryStore {
    override async create (): Promise<void> {
      throw new FST_TASK_API_RUNNER_CLOSED()
    }
  }
  const app = await build(t, { tasks, runner, store: new ClosedStore() })
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x' } } })
  t.same(res.json(), { statusCode: 503, code: 'FST_TASK_API_RUNNER_CLOSED', error: 'Service Unavailable', message: 'the task runner is closed' })
})

t.test('the app\'s own error handler still runs, and gets the generic error', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  const handled: Array<{ statusCode?: number, message: string }> = []
  app.setErrorHandler(async (error: Error & { statusCode?: number }, _request, reply) => {
    handled.push({ statusCode: error.statusCode, message: error.message })
    // The routes' response schema shapes error bodies: {statusCode, code, error, message}.
    return reply.code(error.statusCode ?? 500).send({ code: 'APP_ERROR', message: `ours: ${error.message}` })
  })
  await app.register(taskApi, { tasks, runner, store: new FailingStore(), shutdownTimeout: 200 })
  const res = await app.inject(`/tasks/${someUuid}`)
  t.equal(res.statusCode, 500)
  t.same(res.json(), { code: 'APP_ERROR', message: 'ours: Internal Server Error' })
  const missing = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'nope' } })
  t.same(missing.json(), { code: 'APP_ERROR', message: 'ours: task "nope" is not registered' }, 'and 4xx as before')
  t.same(handled, [{ statusCode: 500, message: 'Internal Server Error' }, { statusCode: 400, message: 'task "nope" is not registered' }])
})
