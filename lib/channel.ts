import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'

/*
 * The connections of the event streams, below the subscriptions: every byte the server
 * sends a client goes through its Channel, which cuts the client once its send buffer is
 * past the hard limit; the heartbeat that finds dead ones; the count of open streams per
 * owner.
 */

/**
 * One client connection. Every frame the server sends it goes through `write`, so the
 * hard buffer limit holds for all of them: a client that never reads is cut, whatever
 * the server was answering.
 */
export interface Channel {
  /** Sends a frame; false when the client is gone, or was just cut for being past the hard limit. */
  write (data: string | Buffer): boolean
  /** A WebSocket ping, or an SSE comment line; under the same limit. */
  ping (): void
  /** Bytes written but not yet sent to the client. */
  readonly buffered: number
}

/** Pings sockets and SSE streams on one timer; closes WebSockets that stopped answering. */
export class Heartbeat {
  readonly #sockets = new Map<WebSocket, { alive: boolean, channel: Channel }>()
  readonly #streams = new Set<Channel>()
  #timer: NodeJS.Timeout | undefined

  constructor (interval: number) {
    if (interval > 0) this.#timer = setInterval(() => this.#beat(), interval).unref()
  }

  addSocket (socket: WebSocket, channel: Channel): void {
    const state = { alive: true, channel }
    this.#sockets.set(socket, state)
    socket.on('pong', () => { state.alive = true })
    socket.once('close', () => this.#sockets.delete(socket))
  }

  addStream (channel: Channel): () => void {
    this.#streams.add(channel)
    return () => this.#streams.delete(channel)
  }

  #beat (): void {
    for (const [socket, state] of this.#sockets) {
      if (!state.alive) {
        socket.terminate()
        continue
      }
      state.alive = false
      state.channel.ping()
    }
    for (const channel of this.#streams) channel.ping()
  }

  stop (): void {
    clearInterval(this.#timer)
  }
}

/** Each WebSocket's TCP connection (absent for app.injectWS). */
const connections = new WeakMap<WebSocket, Socket>()
const dropped = new Error('the close handshake did not finish in 5 s')

/** Closes a socket, and destroys it if the close handshake does not finish (a client that stopped reading). */
export function closeSocket (socket: WebSocket, code: number, reason: string): void {
  if (socket.readyState !== socket.OPEN) return
  socket.close(code, reason)
  const timer = setTimeout(() => {
    // Destroyed with one error, the connection fails its thousands of pending writes
    // with that error; without one, Node makes (and captures a stack for) one per write.
    const connection = connections.get(socket)
    if (connection !== undefined) connection.destroy(dropped)
    else socket.terminate()
  }, 5000).unref()
  socket.once('close', () => clearTimeout(timer))
}

/**
 * Calls `fn` once the client is gone: when its TCP connection closes, which can come well
 * before the WebSocket's own 'close' (that one waits until ws has gone through every frame
 * it had read, one per turn).
 */
export function whenGone (socket: WebSocket, fn: () => void): void {
  let called = false
  const once = (): void => {
    if (called) return
    called = true
    fn()
  }
  socket.once('close', once)
  connections.get(socket)?.once('close', once)
}

/** The WebSocket's channel: past `hardLimit` bytes waiting, close 1013 instead of sending. */
export function wsChannel (socket: WebSocket, hardLimit: number, connection?: Socket): Channel {
  if (connection !== undefined) connections.set(socket, connection)
  const usable = (): boolean => {
    if (socket.readyState !== socket.OPEN) return false
    if (socket.bufferedAmount <= hardLimit) return true
    closeSocket(socket, 1013, 'client too slow: send buffer over its limit')
    // Read nothing more from a client that reads nothing: it cannot make the server work
    // while its close runs out (its close frame is not awaited either).
    socket.pause()
    return false
  }
  return {
    write: (data) => {
      if (!usable()) return false
      socket.send(data, { binary: false })
      return true
    },
    ping: () => { if (usable()) socket.ping() },
    get buffered () { return socket.bufferedAmount },
  }
}

/** The SSE response's channel: past `hardLimit` bytes waiting, the response is destroyed instead. */
export function sseChannel (raw: ServerResponse, hardLimit: number): Channel {
  const usable = (): boolean => {
    if (raw.destroyed || raw.writableEnded) return false
    if (raw.writableLength <= hardLimit) return true
    raw.destroy()
    return false
  }
  return {
    write: (data) => {
      if (!usable()) return false
      raw.write(data)
      return true
    },
    ping: () => { if (usable()) raw.write(': ping\n\n') },
    get buffered () { return raw.writableLength },
  }
}

/**
 * Open streams per owner (or client IP), under `maxStreamsPerOwner`. A stream is counted
 * from the moment it is allowed (before the upgrade, before the SSE headers) until its
 * connection closes.
 */
export class StreamCounter {
  readonly #max: number
  readonly #open = new Map<string, number>()
  #total = 0

  constructor (max: number) {
    this.#max = max
  }

  /** Counts one stream for `key`; returns its release (idempotent), or undefined when `key` is at the cap. */
  acquire (key: string): (() => void) | undefined {
    const count = this.#open.get(key) ?? 0
    if (this.#max > 0 && count >= this.#max) return undefined
    this.#open.set(key, count + 1)
    this.#total++
    let released = false
    return () => {
      if (released) return
      released = true
      this.#total--
      const left = (this.#open.get(key) ?? 1) - 1
      if (left === 0) this.#open.delete(key)
      else this.#open.set(key, left)
    }
  }

  /** Streams open now, over all owners. */
  get total (): number {
    return this.#total
  }
}
