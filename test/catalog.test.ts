import { Ajv } from 'ajv'
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import { createClient } from '../dist/client/index.js'
import { build, fixture } from './helpers.js'

// GET {prefix}/catalog: the tasks a user may run, with what a UI needs to build a form.

t.test('every task: name, description, input and output JSON Schemas, timeout, retries', async (t) => {
  const app = await build(t, { tasks: [fixture('basic.ts'), fixture('retry.ts')], timeout: 60_000 })
  const res = await app.inject('/tasks/catalog')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-cache')
  const { tasks } = res.json() as { tasks: Array<Record<string, any>> }
  const names = tasks.map(task => task.name)
  t.same(names, [...app.tasks.names], 'all of them (no authorize option), in the order of app.tasks.names')
  const hello = tasks.find(task => task.name === 'hello')
  t.same(hello, {
    name: 'hello',
    description: 'Greets someone, one step per count.',
    inputs: { type: 'object', properties: { name: { type: 'string' }, count: { type: 'integer' } }, required: ['name'] },
    outputs: { type: 'object', properties: { output: { type: 'string' } }, required: ['output'] },
    timeout: 60_000,
    retries: 0,
  }, 'the plugin\'s timeout when the task has none')
  t.equal(tasks.find(task => task.name === 'seed-task')?.description, 'The seed\'s class form.', 'a Task subclass\'s description')
  t.equal(tasks.find(task => task.name === 'multi')?.description, null, 'null when the task has none')
  // The schemas are real JSON Schema: a form validator can use them as they are.
  const check = new Ajv().compile(hello?.inputs)
  t.ok(check({ name: 'x', count: 2 }))
  t.notOk(check({ count: 2 }), 'name is required')
  t.notOk(check({ name: 'x', count: 'two' }))
  const withRetries = tasks.find(task => task.retries > 0)
  t.ok(withRetries, 'a task with retries shows them')
  t.equal((await app.inject('/tasks/catalog/')).statusCode, 200, 'with a trailing slash too')
  const noTimeout = await build(t, { tasks: [fixture('basic.ts')] })
  t.equal((await noTimeout.inject('/tasks/catalog')).json().tasks[0].timeout, null, 'null: no limit')
})

t.test('with auth and authorize: 401 without credentials; only the tasks this user may run', async (t) => {
  const users: Record<string, { admin: boolean }> = { alice: { admin: true }, bob: { admin: false } }
  const asked: string[] = []
  const app = await build(t, {
    auth: [async (request) => {
      const user = users[request.headers.authorization ?? '']
      if (user === undefined) throw new Error('who are you?')
      ;(request as FastifyRequest & { user: { admin: boolean } }).user = user
    }],
    authorize: (request, { action, task }) => {
      asked.push(`${action}:${task}`)
      return task !== 'multi' || (request as FastifyRequest & { user: { admin: boolean } }).user.admin
    },
  })
  const refused = await app.inject('/tasks/catalog')
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'FST_TASK_API_UNAUTHENTICATED')
  const names = async (user: string): Promise<string[]> => {
    const res = await app.inject({ url: '/tasks/catalog', headers: { authorization: user } })
    t.equal(res.headers['cache-control'], 'private, no-cache', 'per user: never in a shared cache')
    return (res.json() as { tasks: Array<{ name: string }> }).tasks.map(task => task.name)
  }
  t.ok((await names('alice')).includes('multi'))
  const bobs = await names('bob')
  t.notOk(bobs.includes('multi'), 'bob may not run multi: not shown')
  t.ok(bobs.includes('hello'))
  t.ok(asked.includes('catalog:multi'), 'authorize is asked with action "catalog"')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address() as { port: number }
  const client = createClient({ baseURL: `http://127.0.0.1:${address.port}/tasks`, headers: { authorization: 'bob' } })
  t.same((await client.catalog()).map(task => task.name), bobs, 'client.catalog() reads the same')
})
