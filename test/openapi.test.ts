import swagger from '@fastify/swagger'
import { Validator } from '@seriousme/openapi-schema-validator'
import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import taskApi from '../dist/index.js'
// @ts-expect-error the example is plain JavaScript, without type declarations
import { build as buildExample } from '../examples/openapi/app.js'
import { childExecArgv, fixture, pluginTimeout } from './helpers.js'

// With @fastify/swagger registered, the document describes each route once, each task's
// inputs (the submission as a oneOf by `task`) and outputs (the record), and every error
// answer; it validates against the OpenAPI specification (3.0 and 3.1).

type Doc = { paths: Record<string, any> }

async function documented (t: Test, openapi: string): Promise<{ app: FastifyInstance, doc: Doc }> {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(swagger, { openapi: { openapi, info: { title: 'tasks', version: '1.0.0' } } })
  await app.register(taskApi, { tasks: [fixture('basic.ts'), fixture('params.ts')], concurrency: 1, execArgv: childExecArgv, list: true })
  await app.ready()
  return { app, doc: app.swagger() as unknown as Doc }
}

for (const openapi of ['3.0.3', '3.1.0']) {
  t.test(`OpenAPI ${openapi}: a valid document, each route once, typed inputs and outputs, every error answer`, async (t) => {
    const { app, doc } = await documented(t, openapi)
    const validation = await new Validator().validate(doc as never)
    t.same(validation.errors, undefined, 'no error from the OpenAPI validator')
    t.equal(validation.valid, true)

    const paths = Object.keys(doc.paths)
    t.same(paths.filter(path => path.endsWith('/')), [], 'no trailing-slash twin')
    t.same(paths.sort(), ['/tasks', '/tasks/catalog', '/tasks/client.js', '/tasks/events', '/tasks/events/token', '/tasks/stats', '/tasks/{uuid}', '/tasks/{uuid}/cancel', '/tasks/{uuid}/events', '/tasks/{uuid}/token'].sort())
    t.equal((await app.inject('/tasks/catalog/')).statusCode, 200, 'the twin still answers')

    const body = doc.paths['/tasks'].post.requestBody.content['application/json'].schema
    t.equal(body.discriminator?.propertyName, 'task', 'a oneOf discriminated by task')
    t.same(body.oneOf.map((branch: any) => branch.properties.task.enum[0]), [...app.tasks.names], 'a branch per task')
    const hello = body.oneOf.find((branch: any) => branch.title === 'hello')
    t.match(hello, { required: ['task', 'inputs'], properties: { inputs: { type: 'object', properties: { name: { type: 'string' }, count: { type: 'integer' } }, required: ['name'] } } })
    t.equal(hello.description, 'Greets someone, one step per count.')
    const noInputs = body.oneOf.find((branch: any) => branch.title === 'multi')
    t.same(noInputs.required, ['task'], 'inputs may be left out when none is required')

    const record = doc.paths['/tasks/{uuid}'].get.responses['200'].content['application/json'].schema
    t.equal(record.discriminator?.propertyName, 'task')
    const helloRecord = record.oneOf.find((branch: any) => branch.properties.task.enum[0] === 'hello')
    t.same(helloRecord.properties.outputs, { type: 'object', properties: { output: { type: 'string' } } }, 'typed outputs (none required: {} until it succeeds)')
    t.ok(helloRecord.required.includes('status'))

    const statuses = (path: string, method: string): string[] => Object.keys(doc.paths[path][method].responses).sort()
    t.same(statuses('/tasks', 'post'), ['201', '400', '401', '403', '413', '429', '500', '503'])
    t.same(statuses('/tasks', 'get'), ['200', '400', '401', '500', '503'])
    t.same(statuses('/tasks/{uuid}', 'get'), ['200', '401', '403', '404', '414', '500', '503'])
    t.same(statuses('/tasks/{uuid}', 'delete'), ['204', '401', '403', '404', '409', '500', '503'])
    t.same(statuses('/tasks/{uuid}/cancel', 'post'), ['200', '401', '403', '404', '500', '503'])
    t.same(statuses('/tasks/catalog', 'get'), ['200', '401', '500', '503'])
    t.same(statuses('/tasks/stats', 'get'), ['200', '400', '401', '500', '503'])
    t.match(doc.paths['/tasks/stats'].get.parameters, [{ in: 'query', name: 'minutes', schema: { type: 'integer', minimum: 1, maximum: 1440, default: 60 } }])
    const conflict = doc.paths['/tasks/{uuid}'].delete.responses['409']
    t.match(conflict.description, /FST_TASK_API_TASK_LIVE/, 'each error answer says when, with its codes')
    t.match(conflict.content['application/json'].schema, { required: ['statusCode', 'code', 'error', 'message'] })
  })
}

t.test('the answers are the same with the documents\' schemas: records, errors, the catalog', async (t) => {
  const { app } = await documented(t, '3.1.0')
  const created = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'x', count: 1 } } })
  t.equal(created.statusCode, 201)
  const done = await app.tasks.wait(created.json().uuid)
  const fetched = await app.inject(`/tasks/${done.uuid}`)
  t.same(fetched.json(), JSON.parse(JSON.stringify(done)), 'the whole record, as app.tasks gives it')
  const refused = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: {} } })
  t.same(refused.json(), { statusCode: 400, code: 'FST_TASK_API_INPUT_INVALID', error: 'Bad Request', message: 'inputs/name is required' })
  const missing = await app.inject('/tasks/3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b')
  t.same(missing.json(), { statusCode: 404, code: 'FST_TASK_API_TASK_NOT_FOUND', error: 'Not Found', message: 'task 3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b not found' })
})

t.test('examples/openapi serves the document and Swagger UI', async (t) => {
  const app: FastifyInstance = await buildExample({ logger: false, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv } })
  t.teardown(() => app.close())
  const json = await app.inject('/documentation/json')
  t.equal(json.statusCode, 200)
  const doc = json.json() as Doc
  t.equal((await new Validator().validate(doc as never)).valid, true, 'valid')
  const report = doc.paths['/tasks'].post.requestBody.content['application/json'].schema.oneOf.find((branch: any) => branch.title === 'report')
  t.match(report.properties.inputs.properties, { from: { type: 'string', format: 'date' }, format: { anyOf: [{ enum: ['csv'] }, { enum: ['json'] }] } })
  const ui = await app.inject('/documentation/')
  t.equal(ui.statusCode, 200)
  t.match(ui.body, /swagger-ui/i)
  t.equal((await app.inject('/')).statusCode, 302)
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'report', inputs: { from: '2026-01-01', to: '2026-01-03', stepMs: 0 } } })
  t.equal(res.statusCode, 201)
  t.match(await app.tasks.wait(res.json().uuid), { status: 'succeeded', outputs: { days: 3, body: '["2026-01-01","2026-01-02","2026-01-03"]' }, progress: 3 })
})
