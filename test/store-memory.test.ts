import t from 'tap'
import { MemoryStore } from '../dist/index.js'
import { fenceContract, storeContract } from './store-contract.js'

// The memory store passes the store contract; its own bounds are in memory-store.test.ts.
storeContract(t, 'MemoryStore', () => new MemoryStore())
fenceContract(t, 'MemoryStore', () => new MemoryStore())
