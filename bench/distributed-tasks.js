// Task modules for bench/distributed.js, run by the workers' pool children.
import { defineTask, Type } from 'fastify-task-api/task'

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
/** Wall-clock ms with sub-ms resolution, on the clock every process on the machine shares. */
const now = () => performance.timeOrigin + performance.now()

/**
 * A fixed amount of pure CPU work (no allocation, nothing to optimize away): the bench
 * calibrates `iterations` in its own process, so that a task costs the same CPU whatever
 * else shares the cores (a loop on the wall clock would finish "on time" on a busy core).
 */
export function burn (iterations) {
  let x = 1
  for (let i = 0; i < iterations; i++) x = Math.imul(x ^ i, 0x9e3779b1) >>> 0
  return x
}

/** A no-op that returns when run() was entered. */
export const stamp = defineTask({
  name: 'stamp',
  outputs: { at: Type.Number() },
  run () {
    return now()
  },
})

/**
 * Waits `delay` ms, then calls setProgress `count` times, one every `every` ms on a
 * drift-free schedule, each time with the wall-clock time as the value.
 */
export const ticker = defineTask({
  name: 'ticker',
  inputs: { every: Type.Number(), count: Type.Integer(), delay: Type.Optional(Type.Number()) },
  outputs: { calls: Type.Integer() },
  async run ({ every, count, delay = 0 }, task) {
    await sleep(delay)
    let next = performance.now()
    for (let i = 0; i < count; i++) {
      next += every
      await sleep(Math.max(0, next - performance.now()))
      task.setProgress(now())
    }
    return count
  },
})

/**
 * `burn(iterations)`; returns when it started, how long the loop took inside the child
 * (`ms`, wall clock) and the CPU time the child spent meanwhile (`cpuMs`, user + system).
 */
export const spin = defineTask({
  name: 'spin',
  inputs: { iterations: Type.Integer({ minimum: 1 }) },
  outputs: { at: Type.Number(), ms: Type.Number(), cpuMs: Type.Number(), x: Type.Integer() },
  run ({ iterations }) {
    const at = now()
    const start = performance.now()
    const cpu = process.cpuUsage()
    const x = burn(iterations)
    const used = process.cpuUsage(cpu)
    return { at, ms: performance.now() - start, cpuMs: (used.user + used.system) / 1000, x }
  },
})
