import { readFile } from 'node:fs/promises'
import { gzipSync } from 'node:zlib'
import Fastify from 'fastify'
import t from 'tap'
import taskApi from '../dist/index.js'
import { build, childExecArgv, fixture } from './helpers.js'

// `npm run build` (run before the tests) bundles lib/client into dist/client.min.js.
const bundleFile = new URL('../dist/client.min.js', import.meta.url)

t.test('GET /tasks/client.js serves the browser bundle as JavaScript, cached and revalidated', async (t) => {
  const app = await build(t, { runner: 'inline' })
  const bundle = await readFile(bundleFile)
  const res = await app.inject('/tasks/client.js')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/javascript; charset=utf-8')
  t.equal(res.headers['cache-control'], 'public, max-age=3600, must-revalidate')
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.match(res.headers.etag, /^"[\w-]{27}"$/)
  t.ok(res.rawPayload.equals(bundle), 'the bytes of dist/client.min.js')

  const again = await app.inject({ url: '/tasks/client.js', headers: { 'if-none-match': res.headers.etag as string } })
  t.equal(again.statusCode, 304)
  t.equal(again.body, '')
  const stale = await app.inject({ url: '/tasks/client.js', headers: { 'if-none-match': '"something-else"' } })
  t.equal(stale.statusCode, 200)
})

t.test('the bundle is small, self-contained, and free of TypeBox and Node modules', async (t) => {
  const bundle = await readFile(bundleFile)
  const gzipped = gzipSync(bundle, { level: 9 }).length
  t.comment(`dist/client.min.js: ${bundle.length} B minified, ${gzipped} B min+gzip`)
  t.ok(gzipped <= 5120, `at most 5 KB min+gzip (${gzipped} B)`)
  const text = bundle.toString('utf8')
  t.notMatch(text, /\bimport\s*[\w{*("']/, 'imports nothing: one file')
  t.notMatch(text, /node:|require\(|process\.|Buffer/, 'nothing Node-only')
  t.notMatch(text, /sinclair|typebox|Kind|TypeCompiler/i, 'no TypeBox')
  // Loaded as the browser would, as one ES module: it exports the client.
  const module = await import(`data:text/javascript;base64,${bundle.toString('base64')}`) as Record<string, unknown>
  t.same(Object.keys(module).sort(), ['TaskAPI', 'TaskApiError', 'TaskRunError', 'createClient', 'default'])
  t.equal(module.default, module.TaskAPI)
  t.equal(typeof module.createClient, 'function')
})

t.test('the route follows the prefix', async (t) => {
  const app = await build(t, { runner: 'inline', prefix: '/api/jobs' })
  t.equal((await app.inject('/api/jobs/client.js')).statusCode, 200)
  t.equal((await app.inject('/tasks/client.js')).statusCode, 404)
})

t.test('client: false leaves the route out', async (t) => {
  const app = await build(t, { runner: 'inline', client: false })
  const res = await app.inject('/tasks/client.js')
  t.equal(res.statusCode, 404)
  t.equal(res.json().code, 'FST_TASK_API_TASK_NOT_FOUND', 'the path is just an unknown task then')
})

t.test('a client option that is not a boolean fails register, naming it', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  const register = async (): Promise<void> => {
    await app.register(taskApi, { tasks: [fixture('basic.ts')], runner: 'inline', execArgv: childExecArgv, client: 'yes' as unknown as boolean })
  }
  await t.rejects(register, {
    code: 'FST_TASK_API_OPT_INVALID',
    message: 'options.client must be a boolean, got "yes"',
  })
})
