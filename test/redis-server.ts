import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'

/*
 * A real redis-server of the test's own (Debian's package), on a free port of 127.0.0.1,
 * with its data in a temporary directory: never a shared instance. `.ci/run` installs
 * redis-server when it is missing; without it the tests fail, saying so.
 */

export interface TestRedis {
  port: number
  url: string
  /** Stops the server (SIGTERM, or SIGKILL with `kill`), keeping its data directory. */
  stop (how?: 'term' | 'kill'): Promise<void>
  /** Starts it again on the same port and directory (with `persist`, on the data it saved). */
  start (): Promise<void>
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

/** Answers once the server answers PING (raw RESP, no client library involved). */
async function untilUp (port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis-server exited before answering: ${log()}`)
    const answered = await new Promise<boolean>((resolve) => {
      const socket = new Socket()
      const done = (ok: boolean): void => { socket.destroy(); resolve(ok) }
      socket.setTimeout(500, () => done(false))
      socket.once('error', () => done(false))
      socket.once('data', data => done(data.toString().startsWith('+PONG')))
      socket.connect(port, '127.0.0.1', () => socket.write('PING\r\n'))
    })
    if (answered) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`redis-server did not answer PING on port ${port} within 20 s: ${log()}`)
}

/**
 * Starts a redis-server for the test, stopped (and its directory removed) when the test
 * ends. `persist`: append-only file with an fsync per write, so that a restart keeps
 * every acknowledged write (the settings the README recommends).
 */
export async function startRedis (t: Test, options: { persist?: boolean } = {}): Promise<TestRedis> {
  const found = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (found.error !== undefined || found.status !== 0) {
    throw new Error('redis-server is not installed: apt-get install -y redis-server (.ci/run installs it)')
  }
  const dir = mkdtempSync(join(tmpdir(), 'task-api-redis-'))
  const port = await freePort()
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--protected-mode', 'no',
    ...(options.persist === true ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'])]
  let child: ChildProcess | undefined
  let output = ''
  const start = async (): Promise<void> => {
    output = ''
    const started = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = started
    started.stdout?.on('data', (chunk: Buffer) => { output = (output + chunk.toString()).slice(-4000) })
    started.stderr?.on('data', (chunk: Buffer) => { output = (output + chunk.toString()).slice(-4000) })
    await untilUp(port, started, () => output)
  }
  const stop = async (how: 'term' | 'kill' = 'term'): Promise<void> => {
    const running = child
    child = undefined
    if (running === undefined || running.exitCode !== null || running.signalCode !== null) return
    const exited = once(running, 'exit')
    running.kill(how === 'kill' ? 'SIGKILL' : 'SIGTERM')
    await exited
  }
  await start()
  t.teardown(async () => {
    await stop('kill')
    rmSync(dir, { recursive: true, force: true })
  })
  return { port, url: `redis://127.0.0.1:${port}`, stop, start }
}
