import t from 'tap'
import { build, fixture, submit } from './helpers.js'

// GET /tasks is a way to see tasks that a uuid alone never gave: it exists without owner
// or auth only when asked for, and answers bounded summaries.

const tasks = [fixture('basic.ts')]
// Where no task needs to run, the inline runner: the routes are the same, and a loaded
// machine starts it at once. A task's whole run goes through real children below.
const inline = { tasks, runner: 'inline' as const }
const slowStart = { pluginTimeout: 120_000 }
const summaryKeys = ['attempt', 'created', 'error', 'finished', 'progress', 'started', 'status', 'target', 'task', 'uuid']

t.test('without owner or auth, GET /tasks does not exist (404) unless list: true', async (t) => {
  const closed = await build(t, inline)
  for (const url of ['/tasks', '/tasks/', '/tasks?status=running']) {
    const res = await closed.inject(url)
    t.equal(res.statusCode, 404, url)
    t.equal(res.json().tasks, undefined, url)
  }
  t.equal((await closed.inject('/tasks')).json().message, 'Route GET:/tasks not found', "Fastify's own 404: there is no route")
  t.equal((await submit(closed, 'hello', { name: 'x' })).statusCode, 201, 'submitting still works')

  const open = await build(t, { ...inline, list: true })
  await submit(open, 'hello', { name: 'x' })
  t.equal((await open.inject('/tasks')).json().tasks.length, 1)
})

t.test('with owner or auth the list is on, unless list: false', async (t) => {
  const owner = () => 'ann'
  const auth = [async () => {}]
  t.equal((await (await build(t, { ...inline, owner })).inject('/tasks')).statusCode, 200, 'owner')
  t.equal((await (await build(t, { ...inline, auth })).inject('/tasks')).statusCode, 200, 'auth')
  t.equal((await (await build(t, { ...inline, owner, list: false })).inject('/tasks')).statusCode, 404, 'owner, list: false')
  t.equal((await (await build(t, { ...inline, auth, list: false })).inject('/tasks')).statusCode, 404, 'auth, list: false')
  await t.rejects(build(t, { tasks, list: 'yes' as unknown as boolean }), { code: 'FST_TASK_API_OPT_INVALID', message: 'options.list must be a boolean, got "yes"' })
})

t.test('answers summaries: no outputs, no messages, the error cut to 200 characters', async (t) => {
  const app = await build(t, { tasks, list: true }, slowStart)
  const hello = (await submit(app, 'hello', { name: 'World', count: 3 })).json().uuid as string
  await app.tasks.wait(hello)
  const long = 'disk on fire. '.repeat(1000)
  const raises = (await submit(app, 'raises', { message: long })).json().uuid as string
  t.equal((await app.tasks.wait(raises)).error, `${long.slice(0, 4095)}…`, 'the record keeps the error up to 4,096 characters')

  const res = await app.inject('/tasks')
  t.equal(res.statusCode, 200)
  const [failed, succeeded] = res.json().tasks
  t.same(Object.keys(succeeded).sort(), summaryKeys, 'only the summary fields')
  t.same({ ...succeeded, created: 'x', started: 'x', finished: 'x' },
    { uuid: hello, task: 'hello', status: 'succeeded', progress: 3, target: 3, attempt: 1, created: 'x', started: 'x', finished: 'x', error: null })
  t.equal(failed.uuid, raises)
  t.equal(failed.error.length, 200)
  t.equal(failed.error, long.slice(0, 199) + '…')
  t.ok(res.body.length < 1000, `a small body (${res.body.length} bytes) for a task with a 14 KB error`)
  t.same(Object.keys((await app.inject(`/tasks/${hello}`)).json()).sort(), [...summaryKeys, 'messages', 'messagesDropped', 'outputs'].sort(),
    'GET /tasks/:uuid still answers the whole record')
})

t.test('filters by status and task, newest first, at most limit (1 to 1000)', async (t) => {
  const app = await build(t, { tasks, list: true }, slowStart)
  const uuids: string[] = []
  for (const name of ['a', 'b', 'c']) uuids.push((await submit(app, 'hello', { name, count: 1 })).json().uuid)
  uuids.push((await submit(app, 'raises', {})).json().uuid)
  for (const uuid of uuids) await app.tasks.wait(uuid)
  const list = async (query: string) => ((await app.inject(`/tasks${query}`)).json().tasks as Array<{ uuid: string }>).map(task => task.uuid)
  t.same(await list(''), [...uuids].reverse())
  t.same(await list('?task=hello'), uuids.slice(0, 3).reverse())
  t.same(await list('?status=failed'), [uuids[3]])
  t.same(await list('?status=succeeded&task=hello&limit=2'), [uuids[2], uuids[1]])
  t.same(await list('?status=running'), [])
  t.same(await list('?task=no-such-task'), [])
  t.equal((await app.inject('/tasks?limit=1000')).statusCode, 200)
  for (const query of ['?limit=1001', '?limit=0', '?status=lost']) {
    t.equal((await app.inject(`/tasks${query}`)).statusCode, 400, query)
  }
})

t.test('cursor pages: next until null, every task once, stable while tasks are created and deleted', async (t) => {
  const app = await build(t, { ...inline, list: true })
  const uuids: string[] = []
  for (let i = 0; i < 12; i++) uuids.push((await app.tasks.submit('hello', { name: `t${i}`, count: 1 })).uuid)
  for (const uuid of uuids) await app.tasks.wait(uuid)
  const page = async (query: string) => (await app.inject(`/tasks${query}`)).json() as { tasks: Array<{ uuid: string }>, next: string | null }

  const first = await page('?limit=5')
  t.same(first.tasks.map(task => task.uuid), uuids.slice(7).reverse(), 'the newest five')
  t.type(first.next, 'string')
  // Between pages: new tasks arrive, and one not yet seen is deleted.
  const newer = (await app.tasks.submit('hello', { name: 'new', count: 1 })).uuid
  await app.tasks.wait(newer)
  t.equal(await app.tasks.delete(uuids[3] as string), true)
  const second = await page(`?limit=5&cursor=${first.next}`)
  t.same(second.tasks.map(task => task.uuid), [uuids[6], uuids[5], uuids[4], uuids[2], uuids[1]], 'the next five older ones: the new task is not here, the deleted one is gone')
  const third = await page(`?limit=5&cursor=${second.next}`)
  t.same(third.tasks.map(task => task.uuid), [uuids[0]], 'the last page')
  t.equal(third.next, null, 'and no next')
  t.equal((await page('?limit=13')).next, null, 'a page that holds everything has no next')

  const filtered = await page('?task=hello&status=succeeded&limit=4')
  const rest = await page(`?task=hello&status=succeeded&limit=100&cursor=${filtered.next}`)
  t.same([...filtered.tasks, ...rest.tasks].map(task => task.uuid), [newer, ...uuids.filter((_, i) => i !== 3).reverse()], 'filters and cursors combine')

  const programmatic = await app.tasks.list({ limit: 5 })
  t.same(programmatic.tasks.map(task => task.uuid), [newer, ...uuids.slice(8).reverse()], 'app.tasks.list: the same pages')
  t.same(Object.keys(programmatic.tasks[0] as object).sort(), summaryKeys, 'of summaries')
  t.same((await app.tasks.list({ limit: 5, cursor: programmatic.next as string })).tasks.map(task => task.uuid), uuids.slice(3, 8).filter((_, i) => i !== 0).reverse().concat(uuids[2] as string))

  for (const cursor of ['abc', '-1', '0', '1.5', 'x'.repeat(129)]) {
    const res = await app.inject(`/tasks?cursor=${cursor}`)
    t.equal(res.statusCode, 400, `cursor ${cursor.slice(0, 10)}`)
  }
  t.match((await app.inject('/tasks?cursor=abc')).json(), { code: 'FST_TASK_API_CURSOR_INVALID', message: 'querystring/cursor is not a cursor of this list: pass the next of an earlier page' })
  await t.rejects(app.tasks.list({ cursor: 'abc' }), { name: 'InvalidCursorError' }, 'app.tasks.list rejects with the store\'s error')
})
