import t from 'tap'
import { Fifo } from '../dist/runner/queue.js'

// The runner's queue: first in, first out, and O(1) removal by key (cancels, and a close
// taking back thousands of queued jobs).

interface Job { uuid: string }
const job = (uuid: string): Job => ({ uuid })
const drainAll = (queue: Fifo<Job>): string[] => {
  const out: string[] = []
  for (let item = queue.shift(); item !== undefined; item = queue.shift()) out.push(item.uuid)
  return out
}

t.test('first in, first out; removal by key from the front, the middle and the back', async (t) => {
  const queue = new Fifo<Job>(item => item.uuid)
  for (const uuid of ['a', 'b', 'c', 'd', 'e']) queue.push(job(uuid))
  t.equal(queue.length, 5)
  t.same(queue.remove('c'), job('c'))
  t.equal(queue.remove('c'), undefined, 'once')
  t.equal(queue.remove('x'), undefined, 'never queued')
  t.same(queue.remove('a'), job('a'))
  t.same(queue.remove('e'), job('e'))
  t.equal(queue.length, 2)
  t.same(drainAll(queue), ['b', 'd'])
  t.equal(queue.length, 0)
  t.equal(queue.shift(), undefined)
  queue.push(job('f'))
  t.same(drainAll(queue), ['f'], 'usable once emptied')
})

t.test('unshift puts an item back at the front, whether or not the front was consumed', async (t) => {
  const queue = new Fifo<Job>(item => item.uuid)
  queue.unshift(job('a')) // empty queue, nothing consumed
  queue.push(job('b'))
  queue.unshift(job('z'))
  t.same(queue.remove('a'), job('a'), 'what was put back can be removed')
  t.same(queue.shift(), job('z'))
  queue.unshift(job('y')) // into the consumed front
  queue.push(job('c'))
  t.equal(queue.length, 3)
  t.same(drainAll(queue), ['y', 'b', 'c'])
})

t.test('drain returns what is queued, in order, without the removed ones, and empties the queue', async (t) => {
  const queue = new Fifo<Job>(item => item.uuid)
  for (let i = 0; i < 10; i++) queue.push(job(String(i)))
  queue.shift()
  queue.remove('5')
  t.same(queue.drain().map(item => item.uuid), ['1', '2', '3', '4', '6', '7', '8', '9'])
  t.equal(queue.length, 0)
  t.equal(queue.remove('7'), undefined, 'the index was emptied too')
  t.equal(queue.shift(), undefined)
})

t.test('positions stay right across compactions: 30,000 items pushed, shifted and removed in turns', async (t) => {
  const queue = new Fifo<Job>(item => item.uuid)
  const model: string[] = []
  let next = 0
  let mismatches = 0
  for (let round = 0; round < 3000; round++) {
    for (let i = 0; i < 10; i++) {
      const uuid = String(next++)
      queue.push(job(uuid))
      model.push(uuid)
    }
    // Remove one from the middle of what is queued, then shift a few.
    const victim = model[Math.floor(model.length / 2)] as string
    if (queue.remove(victim)?.uuid !== victim) mismatches++
    model.splice(model.indexOf(victim), 1)
    for (let i = 0; i < 8 && model.length > 0; i++) {
      if (queue.shift()?.uuid !== model.shift()) mismatches++
    }
    if (round % 500 === 0) {
      const put = model.shift() as string
      if (queue.shift()?.uuid !== put) mismatches++
      queue.unshift(job(put))
      model.unshift(put)
    }
    if (queue.length !== model.length) mismatches++
  }
  t.equal(mismatches, 0)
  t.same(drainAll(queue), model, 'what is left, in order')
})
