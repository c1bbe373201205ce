import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net, { type AddressInfo } from 'node:net'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import WebSocket from 'ws'
import type { TaskApiOptions } from '../dist/index.js'
import { build, fixture } from './helpers.js'

// Real sockets on 127.0.0.1 for the stream tests: `ws` clients, and a raw TCP client
// that speaks just enough of the WebSocket protocol to flood a server without reading.

/**
 * Fastify's 10 s default for a plugin to load: under heavy load (both cores busy with
 * other work) forking the pool and importing the task modules under tsx can take longer.
 */
export const pluginTimeout = 120_000

export interface Frame { type: string, seq?: number, uuid?: string, [key: string]: unknown }

export async function serve (t: Test, options: Partial<TaskApiOptions> = {}, server: FastifyServerOptions = {}): Promise<{ app: FastifyInstance, base: string, port: number }> {
  const app = await build(t, { tasks: [fixture('stream.ts')], concurrency: 1, progressInterval: 20, ...options }, { pluginTimeout, ...server })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  return { app, base: `127.0.0.1:${port}`, port }
}

/** Opens a socket and collects every frame until it closes. */
export function follow (url: string, options?: WebSocket.ClientOptions) {
  const socket = new WebSocket(url, options)
  const frames: Frame[] = []
  socket.on('message', data => frames.push(JSON.parse(data.toString()) as Frame))
  const closed = new Promise<{ code: number, reason: string }>((resolve) => {
    socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  socket.on('error', () => {})
  return { socket, frames, closed }
}

/** Resolves with the HTTP status of a refused upgrade (or 101 when it was accepted), and the body of a refusal. */
export async function upgradeStatus (url: string, options?: WebSocket.ClientOptions): Promise<{ status: number, body: string, socket: WebSocket }> {
  const socket = new WebSocket(url, options)
  socket.on('error', () => {})
  const outcome = await Promise.race([
    once(socket, 'open').then(() => ({ status: 101, body: '' })),
    once(socket, 'unexpected-response').then(async ([, response]) => {
      const message = response as import('node:http').IncomingMessage
      let body = ''
      message.setEncoding('utf8')
      for await (const chunk of message) body += chunk as string
      return { status: message.statusCode ?? 0, body }
    }),
  ])
  return { ...outcome, socket }
}

/** Resolves true once `predicate` holds, false if it still does not after `ms`. Polls every 5 ms. */
export function eventually (predicate: () => boolean, ms = 15_000): Promise<boolean> {
  const deadline = Date.now() + ms
  return new Promise((resolve) => {
    const check = (): void => {
      if (predicate()) resolve(true)
      else if (Date.now() > deadline) resolve(false)
      else setTimeout(check, 5)
    }
    check()
  })
}

/** A masked WebSocket text frame (what a client must send) carrying `text`, under 126 bytes. */
export function clientFrame (text: string): Buffer {
  const payload = Buffer.from(text)
  const mask = randomBytes(4)
  const frame = Buffer.alloc(6 + payload.length)
  frame[0] = 0x81
  frame[1] = 0x80 | payload.length
  mask.copy(frame, 2)
  for (let i = 0; i < payload.length; i++) frame[6 + i] = (payload[i] as number) ^ (mask[i % 4] as number)
  return frame
}

/**
 * A WebSocket client on a raw TCP socket: it completes the upgrade, then never reads
 * again and writes `junk` frames as fast as the socket takes them, up to `maxBytes`.
 * `flooding` resolves once that much is written or the server cut the connection;
 * `closed` once the socket is gone.
 */
export async function flooder (port: number, path: string, junk: Buffer, maxBytes: number) {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  await once(socket, 'connect')
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
  let head = ''
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      socket.off('data', onData)
      socket.pause()
      if (head.startsWith('HTTP/1.1 101')) resolve()
      else reject(new Error(`upgrade refused: ${head.split('\r\n')[0] ?? ''}`))
    }
    socket.on('data', onData)
    socket.once('close', () => reject(new Error('closed during the upgrade')))
  })
  const chunk = Buffer.concat(Array.from({ length: 1024 }, () => junk))
  let written = 0
  let gone = false
  void closed.then(() => { gone = true })
  const flooding = (async () => {
    while (!gone && written < maxBytes) {
      written += chunk.length
      if (!socket.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            socket.off('drain', done)
            socket.off('close', done)
            resolve()
          }
          socket.on('drain', done)
          socket.on('close', done)
        })
      }
    }
    return written
  })()
  return {
    flooding,
    closed,
    get gone () { return gone },
    /** Reads again, to the end: how a client that stopped reading learns the server dropped it. */
    readToEnd: async () => {
      socket.resume()
      await closed
    },
    destroy: () => socket.destroy(),
  }
}
