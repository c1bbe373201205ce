/*
 * What the form reads of a catalog entry's input schemas (plain JSON Schema, as TypeBox
 * writes it), and which control each input gets.
 */

export interface Schema {
  type?: string | string[]
  enum?: unknown[]
  const?: unknown
  anyOf?: Schema[]
  oneOf?: Schema[]
  properties?: Record<string, Schema>
  required?: string[]
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  exclusiveMaximum?: number
  multipleOf?: number
  format?: string
  description?: string
  title?: string
  default?: unknown
}

export type Kind = 'text' | 'integer' | 'number' | 'boolean' | 'choice' | 'json'

/** An input as the form shows it. */
export interface Input {
  name: string
  kind: Kind
  required: boolean
  /** The schema, with a nullable union (`T | null`) reduced to `T`. */
  schema: Schema
  /** For `choice`: the values to pick from. */
  choices: unknown[]
  /** The description (or title) and hints such as the bounds: the help text. */
  help: string
}

const isSchema = (value: unknown): value is Schema => typeof value === 'object' && value !== null && !Array.isArray(value)
const isPrimitive = (value: unknown): boolean => value === null || ['string', 'number', 'boolean'].includes(typeof value)
const num = (value: unknown): number | undefined => typeof value === 'number' && Number.isFinite(value) ? value : undefined

/** The inputs of a task, in the schema's order. */
export function inputsOf (schema: unknown): Input[] {
  if (!isSchema(schema) || !isSchema(schema.properties)) return []
  const required = new Set(Array.isArray(schema.required) ? schema.required : [])
  return Object.entries(schema.properties)
    .filter((entry): entry is [string, Schema] => isSchema(entry[1]))
    .map(([name, property]) => describe(name, property, required.has(name)))
}

function describe (name: string, given: Schema, required: boolean): Input {
  const schema = nonNull(given)
  const choices = choicesOf(schema)
  const type = Array.isArray(schema.type) ? schema.type.filter(kind => kind !== 'null') : [schema.type]
  let kind: Kind = 'json'
  if (choices !== undefined) kind = 'choice'
  else if (type.length === 1 && (type[0] === 'string' || type[0] === 'integer' || type[0] === 'number' || type[0] === 'boolean')) kind = type[0] === 'string' ? 'text' : type[0]
  return { name, kind, required, schema, choices: choices ?? [], help: help(schema, kind) }
}

/** `T | null` (TypeBox's Union([T, Null])) as T, keeping the outer description and default. */
function nonNull (schema: Schema): Schema {
  const branches = schema.anyOf ?? schema.oneOf
  if (!Array.isArray(branches)) return schema
  const others = branches.filter(branch => isSchema(branch) && branch.type !== 'null')
  const [only] = others
  if (others.length !== 1 || only === undefined || others.length === branches.length) return schema
  const { anyOf, oneOf, ...outer } = schema
  return { ...only, ...outer }
}

/** The values of an enum, a const, or a union of literals (TypeBox's Union of Literals). */
function choicesOf (schema: Schema): unknown[] | undefined {
  let values: unknown[] | undefined
  if (Array.isArray(schema.enum)) values = schema.enum
  else if ('const' in schema) values = [schema.const]
  else {
    const branches = schema.anyOf ?? schema.oneOf
    if (Array.isArray(branches) && branches.length > 0 && branches.every(branch => isSchema(branch) && ('const' in branch || Array.isArray(branch.enum)))) {
      values = branches.flatMap(branch => Array.isArray(branch.enum) ? branch.enum : [branch.const])
    }
  }
  return values !== undefined && values.length > 0 && values.every(isPrimitive) ? values : undefined
}

/** The bounds of a number input, as the browser's min, max and step. */
export function bounds (input: Input): { min?: number, max?: number, step: number | 'any' } {
  const { schema } = input
  const integer = input.kind === 'integer'
  const above = num(schema.exclusiveMinimum)
  const below = num(schema.exclusiveMaximum)
  const min = num(schema.minimum) ?? (above === undefined ? undefined : integer ? Math.floor(above) + 1 : above)
  const max = num(schema.maximum) ?? (below === undefined ? undefined : integer ? Math.ceil(below) - 1 : below)
  return {
    ...(min === undefined ? {} : { min }),
    ...(max === undefined ? {} : { max }),
    step: num(schema.multipleOf) ?? (integer ? 1 : 'any'),
  }
}

function help (schema: Schema, kind: Kind): string {
  const parts: string[] = []
  const about = schema.description ?? schema.title
  if (typeof about === 'string' && about !== '') parts.push(about)
  const low = num(schema.minimum)
  const high = num(schema.maximum)
  const above = num(schema.exclusiveMinimum)
  const below = num(schema.exclusiveMaximum)
  if (kind === 'integer' || kind === 'number') {
    const range: string[] = []
    if (kind === 'integer') range.push('a whole number')
    if (low !== undefined) range.push(`at least ${low}`)
    if (above !== undefined) range.push(`more than ${above}`)
    if (high !== undefined) range.push(`at most ${high}`)
    if (below !== undefined) range.push(`less than ${below}`)
    if (num(schema.multipleOf) !== undefined) range.push(`a multiple of ${String(schema.multipleOf)}`)
    if (range.length > 0) parts.push(capital(range.join(', ')) + '.')
  }
  if (kind === 'text' && typeof schema.format === 'string') parts.push(`Format: ${schema.format}.`)
  if (kind === 'json') parts.push(`JSON${jsonHint(schema)}.`)
  return parts.join(' ')
}

const capital = (text: string): string => text.charAt(0).toUpperCase() + text.slice(1)

function jsonHint (schema: Schema): string {
  const type = Array.isArray(schema.type) ? schema.type.join(' or ') : schema.type
  return type === 'array' ? ', a list: [ … ]' : type === 'object' ? ', an object: { … }' : type === undefined ? '' : `, ${type}`
}

/** How a choice reads in the select. */
export const choiceText = (value: unknown): string => typeof value === 'string' ? value : JSON.stringify(value)
