import { once } from 'node:events'
import { rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import t from 'tap'
import type { TaskEvent } from '../dist/index.js'
import { fanOutSlice } from '../dist/events.js'
import { fixture } from './helpers.js'
import { clientFrame, eventually, flooder, follow, serve, type Frame } from './stream-helpers.js'

// Slow and hostile readers against a real server: every frame the server sends counts
// against the client's hard buffer limit, and a large fan-out never runs in one turn.

const hardBufferLimit = 64 * 1024
// Far more junk than it takes to fill the kernel's buffers and the hard limit with the
// server's answers (about 100 bytes of error frame per 7-byte junk frame).
const floodCap = 4 * 1024 * 1024

// Each test starts a server with its own pool of children: under load the file can take
// longer than tap's default 60 s.
t.setTimeout(180_000)

for (const route of ['GET /tasks/events', 'GET /tasks/:uuid/events'] as const) {
  t.test(`a client on ${route} that floods junk frames and never reads is cut; the server serves others meanwhile`, async (t) => {
    // No heartbeat: only the buffer limit may cut the flooder.
    const { app, base, port } = await serve(t, { concurrency: 2, streams: { hardBufferLimit, softBufferLimit: 16 * 1024, heartbeatInterval: 0 } })
    const held = await app.tasks.submit('hold', { ms: 60_000 })
    const url = route === 'GET /tasks/events' ? '/tasks/events' : `/tasks/${held.uuid}/events`
    const flood = await flooder(port, url, clientFrame('x'), floodCap)
    t.equal(app.tasks.stats().streams, 1, 'the flooder holds one stream')

    // Meanwhile another client follows a task from start to end.
    const task = await app.tasks.submit('steps', { steps: 5, delay: 10 })
    const other = follow(`ws://${base}/tasks/${task.uuid}/events`)
    t.equal((await other.closed).code, 1000, 'the other client was served to the end')
    const messages = [...(other.frames[0]?.task as { messages: string[] }).messages,
      ...other.frames.filter(frame => frame.type === 'message').map(frame => frame.message)]
    t.same(messages, ['step 1', 'step 2', 'step 3', 'step 4', 'step 5'], 'every message of the other task')

    const written = await flood.flooding
    // The server cut the flooder (close 1013, then the connection dropped): its stream is
    // released, and with it every byte the server held for it.
    const released = await eventually(() => app.tasks.stats().streams === 0)
    t.ok(released, 'the server released the flooder\'s connection')
    t.equal(app.tasks.stats().subscribers, 0, 'and its subscription')
    if (!released) flood.destroy()
    await flood.readToEnd()
    t.ok(flood.gone, 'the flooder, reading again, finds its connection gone')
    t.comment(`the flooder wrote ${Math.round(written / 1024)} KiB of junk before the server dropped it`)
    const again = follow(`ws://${base}/tasks/${task.uuid}/events`)
    t.equal((await again.closed).code, 1000, 'the server still serves')
  })
}


t.test('a snapshot or a final record larger than the hard limit still reaches a client that reads', async (t) => {
  const { app, base } = await serve(t, { streams: { hardBufferLimit: 1024, softBufferLimit: 512 } })
  const task = await app.tasks.submit('flood', { count: 40, size: 100 })
  const early = follow(`ws://${base}/tasks/${task.uuid}/events`)
  await app.tasks.wait(task.uuid)
  const late = follow(`ws://${base}/tasks/${task.uuid}/events`)
  t.equal((await late.closed).code, 1000, 'a client that comes after the end gets the snapshot, then close 1000')
  t.ok(JSON.stringify(late.frames[0]).length > 4096, 'the snapshot is over the limit')
  t.equal((late.frames[0]?.task as { messages: string[] }).messages.length, 40)
  t.equal((await early.closed).code, 1000, 'a client that followed the task gets the final record, then close 1000')
  const final = early.frames.at(-1) as Frame & { task: { messages: string[] } }
  t.ok(JSON.stringify(final).length > 4096, 'the final record is over the limit')
  t.equal(final.task.messages.length, 40)
})

t.test('the final status to thousands of subscribers is delivered over several turns, in order, exactly once each', async (t) => {
  const sockets = 300
  const listeners = 3000
  const messages = 20
  const { app, base } = await serve(t, { tasks: [fixture('stream.ts'), fixture('fanout.ts')], streams: { heartbeatInterval: 0, maxStreamsPerOwner: 0 } })
  const release = path.join(os.tmpdir(), `fastify-task-api-fanout-${process.pid}-${Date.now()}`)
  t.teardown(() => rm(release, { force: true }))
  const task = await app.tasks.submit('burst', { release, messages })

  const clients: Array<ReturnType<typeof follow>> = []
  for (let i = 0; i < sockets; i += 50) {
    const batch = Array.from({ length: 50 }, () => follow(`ws://${base}/tasks/${task.uuid}/events`))
    await Promise.all(batch.map(client => once(client.socket, 'message')))
    clients.push(...batch)
  }
  t.equal(app.tasks.stats().streams, sockets)

  // A setImmediate ticker counts the turns of the event loop; each listener notes the turn
  // its final status arrived in.
  let turn = 0
  let ticking = true
  const tick = (): void => {
    turn++
    if (ticking) setImmediate(tick)
  }
  const seen: TaskEvent[][] = []
  const finalTurns: number[] = []
  for (let i = 0; i < listeners; i++) {
    const events: TaskEvent[] = []
    seen.push(events)
    app.tasks.subscribe(task.uuid, (event) => {
      events.push(event)
      if (event.type === 'status' && event.task !== undefined) finalTurns.push(turn)
    })
  }
  t.equal(app.tasks.stats().subscribers, sockets + listeners)
  const delay = monitorEventLoopDelay({ resolution: 1 })
  delay.enable()
  tick()
  await writeFile(release, '')
  await app.tasks.wait(task.uuid)
  await Promise.all(clients.map(client => client.closed))
  await eventually(() => finalTurns.length === listeners)
  ticking = false
  delay.disable()

  t.equal(finalTurns.length, listeners, 'every listener got the final status')
  t.ok((finalTurns.at(-1) as number) > (finalTurns[0] as number),
    `the final status reached ${listeners + sockets} subscribers (slices of ${fanOutSlice.listeners}) over ${(finalTurns.at(-1) as number) - (finalTurns[0] as number) + 1} turns of the event loop`)
  t.comment(`longest event-loop block during the fan-out (server and ${sockets} clients in one process): ${(delay.max / 1e6).toFixed(1)} ms`)

  const expected = Array.from({ length: messages }, (_, i) => `m${i + 1}`)
  const inOrder = (seqs: number[]): boolean => seqs.every((seq, i) => i === 0 || seq > (seqs[i - 1] as number))
  const badListeners = seen.filter((events) => {
    const finals = events.filter(event => event.type === 'status' && event.task !== undefined)
    const got = events.flatMap(event => event.type === 'message' ? [event.message] : [])
    return finals.length !== 1 || events.at(-1) !== finals[0] || !inOrder(events.map(event => event.seq)) || got.join() !== expected.join()
  })
  t.equal(badListeners.length, 0, 'each listener: every message once, in seq order, then the final status once')
  const badSockets = clients.filter(({ frames }) => {
    const finals = frames.filter((frame: Frame) => frame.type === 'status' && frame.task !== undefined)
    const got = [...(frames[0]?.task as { messages: string[] }).messages,
      ...frames.filter(frame => frame.type === 'message').map(frame => frame.message as string)]
    return frames[0]?.type !== 'snapshot' || finals.length !== 1 || frames.at(-1) !== finals[0] ||
      !inOrder(frames.map(frame => frame.seq as number)) || got.join() !== expected.join()
  })
  t.equal(badSockets.length, 0, 'each socket: the snapshot, every message once, in seq order, then the final status once')
  t.ok(await eventually(() => app.tasks.stats().streams === 0), 'the server closed every socket')
})
