import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import t, { type Test } from 'tap'
import { exists, ps } from './helpers.js'
import { ended, running } from './proc.js'
import { follow, type Frame } from './stream-helpers.js'

/*
 * examples/distributed/start.js as a user runs it: one process that starts a redis-server
 * of its own, 2 API nodes and 2 workers (the worker command), each a process. A task
 * submitted on one node is followed over a WebSocket on the other; SIGTERM, or a worker's
 * death, must leave no process behind.
 */

t.setTimeout(300_000)
const script = fileURLToPath(new URL('../examples/distributed/start.js', import.meta.url))
const browserPath = '/usr/bin/chromium'
const output = new URL('./output/', import.meta.url)

/** `n` distinct free ports of 127.0.0.1 (all held open until every one is chosen). */
async function freePorts (n: number): Promise<number[]> {
  const servers: Server[] = []
  for (let i = 0; i < n; i++) {
    const server = createServer()
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve) })
    servers.push(server)
  }
  const ports = servers.map(server => (server.address() as { port: number }).port)
  await Promise.all(servers.map(server => new Promise(resolve => server.close(resolve))))
  return ports
}

/** Every process below `root` in the process table, read with ps. */
function descendants (root: number): number[] {
  const parents = new Map<number, number[]>()
  for (const line of ps(['-e', '-o', 'pid=,ppid=']).split('\n')) {
    const [pid, ppid] = line.trim().split(/\s+/).map(Number)
    if (pid === undefined || ppid === undefined || Number.isNaN(pid)) continue
    parents.set(ppid, [...(parents.get(ppid) ?? []), pid])
  }
  const found: number[] = []
  const walk = (pid: number): void => {
    for (const child of parents.get(pid) ?? []) {
      found.push(child)
      walk(child)
    }
  }
  walk(root)
  return found
}

interface Example {
  child: ChildProcess
  /** What start.js printed so far (stdout and stderr). */
  output: () => string
  /** The pids start.js reported, by name: redis-server, api-1, api-2, worker-1, worker-2. */
  pids: Map<string, number>
  ports: number[]
  /** Its data directory (its own redis-server's). */
  dataDir: string
  exit: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  /** Every process it started, and theirs, as the process table shows them now. */
  tree: () => number[]
}

/*
 * "Gone": start.js waits for each of its own children to exit (Node reaps it) before it
 * exits, so those pids must be out of the process table at once. Their own children (a
 * worker's task processes and its pool's reaper, a /bin/sh) are reaped by their parent or,
 * when that parent has exited first, by init: a zombie awaiting init counts as ended
 * (proc.ts `running`).
 */

/** Starts the example on free ports with its own redis-server; resolves once it prints that it is ready. */
async function startExample (t: Test): Promise<Example> {
  const ports = await freePorts(2)
  const { REDIS_URL: _ignored, ...env } = process.env
  const child = spawn(process.execPath, [script], { env: { ...env, API_PORTS: ports.join(',') }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const seen = new Set<number>()
  const tree = (): number[] => {
    if (running(child.pid as number)) for (const pid of descendants(child.pid as number)) seen.add(pid)
    return [...seen]
  }
  // Whatever happens to the test, nothing it started survives it (redis-server has a process group of its own).
  t.teardown(() => {
    tree()
    child.kill('SIGKILL')
    for (const pid of seen) {
      try {
        if (running(pid)) process.kill(pid, 'SIGKILL')
      } catch {}
    }
  })
  const exit = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
  await new Promise<void>((resolve, reject) => {
    const read = (chunk: Buffer): void => {
      out += chunk.toString()
      if (/^start\.js: ready: /m.test(out)) resolve()
    }
    child.stdout?.on('data', read)
    child.stderr?.on('data', read)
    void exit.then(({ code, signal }) => reject(new Error(`start.js exited with ${signal ?? String(code)} before it was ready:\n${out}`)))
    setTimeout(() => reject(new Error(`start.js was not ready within 120 s:\n${out}`)), 120_000).unref()
  })
  const pids = new Map([...out.matchAll(/^start\.js: (\S+) pid (\d+)/gm)].map(([, name, pid]) => [name as string, Number(pid)]))
  const dataDir = /\(data in (.+)\)$/m.exec(out)?.[1] as string
  t.match(out, new RegExp(`^start\\.js: ready: http://127\\.0\\.0\\.1:${ports[0] as number}/ and http://127\\.0\\.0\\.1:${ports[1] as number}/`, 'm'), 'it prints the URLs of both API nodes')
  t.same([...pids.keys()].sort(), ['api-1', 'api-2', 'redis-server', 'worker-1', 'worker-2'], 'it reports the pid of each process it started')
  t.ok(existsSync(dataDir), `its redis-server keeps its data in ${dataDir}`)
  const all = tree()
  for (const [name, pid] of pids) t.ok(all.includes(pid), `${name} (pid ${pid}) is a child of start.js`)
  return { child, output: () => out, pids, ports, dataDir, exit, tree }
}

t.test('a task submitted on one API node is followed on the other; SIGTERM stops every process', async (t) => {
  const example = await startExample(t)
  const [port1, port2] = example.ports as [number, number]
  const workers = [example.pids.get('worker-1'), example.pids.get('worker-2')]
  // Each worker holds a warm pool of 2 task processes (and the pool's reaper).
  for (const pid of workers) t.ok(descendants(pid as number).length >= 3, `worker pid ${String(pid)} has its task processes`)

  const page = await fetch(`http://127.0.0.1:${port1}/`)
  t.equal(page.status, 200)
  t.match(await page.text(), /new WebSocket\(/, 'the page follows tasks over a WebSocket')
  t.same(await (await fetch(`http://127.0.0.1:${port2}/nodes`)).json(), { self: 'api-2', port: port2, nodes: [{ name: 'api-1', port: port1 }, { name: 'api-2', port: port2 }] })

  const response = await fetch(`http://127.0.0.1:${port1}/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ task: 'wait', inputs: { seconds: 3 } }) })
  t.equal(response.status, 201, 'submitted on node 1')
  const { uuid } = await response.json() as { uuid: string }
  // As the page does: a page of node 1 opens a socket on node 2 (its origin is allowed there).
  const client = follow(`ws://127.0.0.1:${port2}/tasks/${uuid}/events`, { origin: `http://127.0.0.1:${port1}` })
  const closed = await client.closed
  t.equal(closed.code, 1000, 'the socket on node 2 closes normally once the task ended')
  const frames = client.frames
  t.equal(frames[0]?.type, 'snapshot', 'first a snapshot')
  const seqs = frames.map(frame => frame.seq as number)
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'seq only grows')
  t.equal(new Set(seqs).size, seqs.length, 'no frame twice')
  const progress = frames.filter(frame => frame.type === 'progress')
  t.ok(progress.length >= 1, `progress frames crossed from the worker to node 2: ${JSON.stringify(progress.map(frame => frame.progress))}`)
  t.match(progress.at(-1), { progress: 3, target: 3 }, 'the last progress frame is 3 of 3')
  const last = frames.at(-1) as Frame & { task: { status: string, outputs: { waited: number, worker: string } } }
  t.match(last, { type: 'status', status: 'succeeded' }, 'then the final status')
  t.equal(last.task.outputs.waited, 3)
  const ranOn = Number(/^pid (\d+) on /.exec(last.task.outputs.worker)?.[1])
  t.ok(workers.includes(ranOn), `a worker ran it (pid ${ranOn}), not an API node`)
  const messages = frames.filter(frame => frame.type === 'message').map(frame => frame.message)
  t.same(messages.slice(-3), ['waited 1 of 3 seconds', 'waited 2 of 3 seconds', 'waited 3 of 3 seconds'])

  await t.test('the page, in Chromium: Run on node 1, the frames come from node 2', async (t) => {
    if (!existsSync(browserPath)) {
      t.fail(`no browser at ${browserPath}: install Debian's chromium (apt-get install -y chromium)`)
      return
    }
    const browser = await chromium.launch({ executablePath: browserPath, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] })
    t.teardown(() => browser.close())
    const tab = await browser.newPage()
    const errors: string[] = []
    tab.on('pageerror', err => errors.push(err.message))
    tab.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
    await tab.goto(`http://127.0.0.1:${port1}/`)
    await tab.waitForFunction(() => (document.getElementById('follow') as HTMLSelectElement | null)?.options.length === 2)
    t.equal(await tab.textContent('#self'), `api-1 (port ${port1})`)
    t.equal(await tab.inputValue('#follow'), String(port2), 'it follows on the other node by default')
    await tab.fill('#seconds', '2')
    await tab.click('#run')
    await tab.waitForFunction(() => document.getElementById('result')?.textContent !== '', undefined, { timeout: 60_000 })
    t.match(await tab.textContent('#result'), /^Result: waited 2 seconds on the worker pid \d+ on /)
    t.equal(await tab.textContent('#from'), `api-2 (port ${port2})`)
    const shown = await tab.$$eval('#frames li', items => items.map(item => item.textContent ?? ''))
    t.ok(shown.some(line => / progress: 2 of 2$/.test(line)), `the frames listed: ${JSON.stringify(shown)}`)
    t.equal(await tab.textContent('#percent'), '100%')
    t.same(errors, [], 'no error in the page')
    await mkdir(output, { recursive: true })
    const screenshot = fileURLToPath(new URL('example-distributed.png', output))
    await tab.screenshot({ path: screenshot, fullPage: true })
    t.comment(`screenshot: ${screenshot}`)
  })

  const everything = example.tree()
  t.ok(everything.length >= 11, `start.js, its 5 processes and the workers' (${everything.length} in all)`)
  example.child.kill('SIGTERM')
  t.same(await example.exit, { code: 0, signal: null }, 'start.js exits 0 after SIGTERM')
  t.same([...example.pids.values()].filter(exists), [], 'redis-server, the API nodes and the workers are gone and reaped (process.kill(pid, 0) finds none)')
  await ended(everything, 30_000)
  t.pass('nothing below them runs either (task processes, the pools\' reapers)')
  t.notOk(existsSync(example.dataDir), 'its redis-server\'s data directory is removed')
  t.match(example.output(), /^start\.js: SIGTERM: stopping/m)
  t.match(example.output(), /^start\.js: stopped$/m)
})

t.test('a worker killed with SIGKILL makes start.js stop everything and exit 1', async (t) => {
  const example = await startExample(t)
  const everything = example.tree()
  const doomed = example.pids.get('worker-1') as number
  process.kill(doomed, 'SIGKILL')
  t.same(await example.exit, { code: 1, signal: null }, 'start.js exits with code 1')
  t.same([...example.pids.values()].filter(exists), [], 'redis-server, the API nodes and the workers are gone and reaped')
  await ended(everything, 30_000)
  t.pass('nothing below them runs either: the killed worker\'s task processes were ended by its pool\'s reaper')
  t.match(example.output(), new RegExp(`^start\\.js: worker-1 \\(pid ${doomed}\\) exited unexpectedly \\(SIGKILL\\): stopping the rest$`, 'm'))
  t.match(example.output(), /^start\.js: stopped \(with errors\)$/m)
  t.notOk(existsSync(example.dataDir), 'its redis-server\'s data directory is removed')
})
