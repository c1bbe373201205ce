// Task modules for bench/streams.js, run in the plugin's pool children.
import { existsSync } from 'node:fs'
import { defineTask, Type } from 'fastify-task-api/task'

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
/** Wall-clock ms with sub-ms resolution, on the clock every process on the machine shares. */
const now = () => performance.timeOrigin + performance.now()

/**
 * Waits `delay` ms, then calls setProgress `count` times, one every `every` ms on a
 * drift-free schedule, each time with the wall-clock time as the value. Returns how many
 * calls it made and this process's mean (timeOrigin + now) - Date.now(), to estimate the
 * clock skew between processes.
 */
export const ticker = defineTask({
  name: 'ticker',
  inputs: { every: Type.Number(), count: Type.Integer(), delay: Type.Optional(Type.Number()) },
  outputs: { calls: Type.Integer(), offset: Type.Number() },
  async run ({ every, count, delay = 0 }, task) {
    await sleep(delay)
    let offset = 0
    let next = performance.now()
    for (let i = 0; i < count; i++) {
      next += every
      await sleep(Math.max(0, next - performance.now()))
      const value = now()
      task.setProgress(value)
      offset += value - Date.now()
    }
    return { calls: count, offset: offset / count }
  },
})

/**
 * Stays running and silent until the file `release` exists (polled every 100 ms) or
 * `ms` have passed, whichever comes first.
 */
export const hold = defineTask({
  name: 'hold',
  inputs: { release: Type.String(), ms: Type.Integer() },
  outputs: { released: Type.Boolean() },
  async run ({ release, ms }) {
    const end = performance.now() + ms
    while (performance.now() < end) {
      if (existsSync(release)) return true
      await sleep(100)
    }
    return false
  },
})
