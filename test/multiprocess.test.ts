import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { fixture, until } from './helpers.js'
import { startRedis } from './redis-server.js'
import { follow, type Frame } from './stream-helpers.js'

// The multi-process scenario: 2 API nodes and 2 workers, each a process of its
// own, on a real redis-server; 100 tasks; one worker SIGKILLed mid-run. Every task reaches
// a final status, and a WebSocket client on each API node receives every final frame (a
// task that ended before its subscribe is answered by a final snapshot).

t.setTimeout(300_000)
const redis = await startRedis(t)
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const finalStatuses = new Set(['succeeded', 'failed', 'cancelled'])

function started (t: Test, child: ChildProcess, marker: RegExp): Promise<string> {
  t.teardown(() => { child.kill('SIGKILL') })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = marker.exec(out)
      if (match !== null) resolve(match[1] ?? match[0])
    })
    child.once('exit', code => reject(new Error(`exited with ${String(code)}: ${out}`)))
  })
}

function apiNode (t: Test, prefix: string): Promise<string> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', `
    import Fastify from 'fastify'
    import taskApi from ${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)}
    const app = Fastify({ pluginTimeout: 120000 })
    await app.register(taskApi, { tasks: [${JSON.stringify(fixture('basic.ts').href)}], redis: { connection: ${JSON.stringify(redis.url)}, prefix: ${JSON.stringify(prefix)} }, concurrency: 0 })
    await app.listen({ port: 0, host: '127.0.0.1' })
    console.log('port ' + app.server.address().port)`], { stdio: ['ignore', 'pipe', 'inherit'], cwd: fileURLToPath(new URL('..', import.meta.url)) })
  return started(t, child, /port (\d+)/)
}

function worker (t: Test, prefix: string): ChildProcess {
  return spawn(process.execPath, [cli, 'worker', '--redis', redis.url, '--prefix', prefix, '--concurrency', '2', '--lock-duration', '1000', fileURLToPath(fixture('basic.ts'))], { stdio: ['ignore', 'pipe', 'inherit'] })
}

t.test('2 API nodes and 2 workers as processes, 100 tasks, a worker SIGKILLed: every task ends, both nodes\' sockets get every final frame', async (t) => {
  const prefix = `{multi-${randomUUID().slice(0, 8)}}`
  const ports = await Promise.all([apiNode(t, prefix), apiNode(t, prefix)])
  const doomed = worker(t, prefix)
  const survivor = worker(t, prefix)
  await Promise.all([started(t, doomed, /running/), started(t, survivor, /running/)])
  const uuids: string[] = []
  for (let i = 0; i < 100; i++) {
    const response = await fetch(`http://127.0.0.1:${ports[i % 2] as string}/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ task: 'sleep', inputs: { ms: 150 } }) })
    t.equal(response.status, 201)
    uuids.push(((await response.json()) as { uuid: string }).uuid)
  }
  const clients = ports.map((port) => {
    const client = follow(`ws://127.0.0.1:${port}/tasks/events`)
    t.teardown(() => client.socket.terminate())
    return client
  })
  await Promise.all(clients.map(async client => new Promise(resolve => client.socket.once('open', resolve))))
  for (const client of clients) for (const uuid of uuids) client.socket.send(JSON.stringify({ type: 'subscribe', uuid }))
  const finals = (frames: Frame[]): Set<string> => new Set(frames.filter(frame =>
    (frame.type === 'status' && finalStatuses.has(frame.status as string) && frame.task !== undefined) ||
    (frame.type === 'snapshot' && finalStatuses.has((frame.task as { status: string } | undefined)?.status ?? ''))).map(frame => (frame.uuid ?? (frame.task as { uuid: string }).uuid) as string))
  // Mid-run: kill a worker that is running tasks.
  await until('some tasks to finish', () => (finals(clients[0]!.frames).size >= 20), 60_000)
  doomed.kill('SIGKILL')
  await until('both sockets to see every task end', () => clients.every(client => finals(client.frames).size === uuids.length), 120_000)
  for (const [i, client] of clients.entries()) t.equal(finals(client.frames).size, 100, `node ${i + 1}'s socket got a final frame for each of the 100 tasks`)
  const statuses: Record<string, number> = {}
  for (const uuid of uuids) {
    const record = await (await fetch(`http://127.0.0.1:${ports[0] as string}/tasks/${uuid}`)).json() as { status: string, error: string | null }
    statuses[record.status] = (statuses[record.status] ?? 0) + 1
    if (record.status === 'failed') t.equal(record.error, 'interrupted: the server stopped while the task was running', 'a failure is an interruption by the kill')
  }
  t.equal((statuses.succeeded ?? 0) + (statuses.failed ?? 0), 100, `every task is final: ${JSON.stringify(statuses)}`)
  const errors = clients.flatMap(client => client.frames.filter(frame => frame.type === 'error'))
  t.same(errors, [], 'no error frame')
})
