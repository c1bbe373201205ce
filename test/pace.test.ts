import t from 'tap'
import { Pace } from '../dist/pace.js'

// The pacing rule behind both coalescing steps (in the child, and per subscriber).

/** Feeds updates at the given times; returns the times at which a send was allowed at once. */
function immediate (pace: Pace, times: number[]): number[] {
  const sent: number[] = []
  for (const now of times) {
    if (pace.wait(now) <= 0) {
      pace.sent(now)
      sent.push(now)
    }
  }
  return sent
}

t.test('a source updating every interval, with jitter, is never throttled and never drifts', async (t) => {
  const pace = new Pace(50)
  const times = Array.from({ length: 200 }, (_, i) => i * 50 + (i % 2 === 0 ? 3 : -3))
  t.equal(immediate(pace, times).length, 200, 'every update goes out at once')
})

t.test('a source faster than the interval gets one send per interval on average', async (t) => {
  const pace = new Pace(50)
  const times = Array.from({ length: 10_000 }, (_, i) => i) // one update per ms for 10 s
  const sent = immediate(pace, times)
  t.ok(sent.length <= Math.ceil(10_000 / 50) + 1, `${sent.length} sends in 10 s`)
  t.ok(sent.length >= Math.floor(10_000 / 50) - 1, 'and not fewer')
  for (let n = 2; n <= sent.length; n++) {
    const span = (sent[n - 1] as number) - (sent[0] as number)
    if (span < (n - 1) * 50 - 25) t.fail(`${n} sends within ${span} ms`)
  }
})

t.test('wait says how long until the next send is allowed', async (t) => {
  const pace = new Pace(100, 0)
  t.ok(pace.wait(0) <= 0)
  pace.sent(0)
  t.equal(pace.wait(40), 60)
  t.ok(pace.wait(100) <= 0)
  pace.sent(250) // late: the schedule restarts from now, no burst to catch up
  t.equal(pace.wait(250), 100)
})
