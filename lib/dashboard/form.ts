import type { CatalogEntry, TaskState } from '../client/index.js'
import { client, TaskApiError } from './api.js'
import { attr, byId, h, uid } from './dom.js'
import { report } from './notices.js'
import { bounds, choiceText, inputsOf, type Input } from './schema.js'

/*
 * The form that starts a task, generated from the catalog: one control per input of the
 * chosen task. Empty optional inputs are left out. A 400 names failing inputs
 * (`inputs/count must be integer; inputs/name is required`): each message goes next to
 * the field it names, the others to the top of the form.
 */

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement

interface Field {
  input: Input
  control: Control
  /** The help text's id ('' when there is none): the control's description when it is valid. */
  described: string
  error: HTMLElement
}

/** A value to send, nothing to send (undefined), or a message to show next to the field. */
type Read = { value: unknown } | { error: string } | undefined

export interface StartForm {
  /** The tasks this user may start; the chosen one stays chosen when it still is one. */
  setCatalog (catalog: CatalogEntry[]): void
}

export function createStartForm (started: (task: TaskState) => void): StartForm {
  const form = byId<HTMLFormElement>('start')
  const select = h('select', { id: 'start-task', 'aria-describedby': 'start-task-about' })
  const about = h('p', { id: 'start-task-about', class: 'help' })
  const inputs = h('div', { class: 'inputs' })
  const errors = h('div', { class: 'form-errors', role: 'alert', tabindex: -1, hidden: true })
  const button = h('button', { type: 'submit', class: 'primary' }, 'Start')
  let catalog: CatalogEntry[] = []
  let fields: Field[] = []

  const chosen = (): CatalogEntry | undefined => catalog.find(entry => entry.name === select.value)

  const build = (): void => {
    clearErrors()
    const entry = chosen()
    about.textContent = entry === undefined ? 'There is no task you may start.' : entry.description ?? ''
    about.hidden = about.textContent === ''
    fields = inputsOf(entry?.inputs).map(field)
    inputs.replaceChildren(...fields.map(({ control }) => control.closest('.field') as HTMLElement))
    if (entry !== undefined && fields.length === 0) inputs.append(h('p', { class: 'note' }, 'This task takes no inputs.'))
  }

  const submit = async (): Promise<void> => {
    const entry = chosen()
    if (entry === undefined) return
    clearErrors()
    const values: Record<string, unknown> = {}
    const invalid: Array<[Field, string]> = []
    for (const each of fields) {
      const value = read(each)
      if (value === undefined) continue
      if ('error' in value) invalid.push([each, value.error])
      else values[each.input.name] = value.value
    }
    if (invalid.length > 0) {
      showErrors(invalid, [])
      return
    }
    button.disabled = true
    form.setAttribute('aria-busy', 'true')
    try {
      const task = await client.submit(entry.name, values)
      clearErrors()
      started(task)
    } catch (err) {
      if (err instanceof TaskApiError && (err.statusCode === 400 || err.statusCode === 413)) refused(err.message)
      else report(err)
    } finally {
      button.disabled = catalog.length === 0
      form.removeAttribute('aria-busy')
    }
  }

  /** Sorts the server's messages: those naming an input go to its field, the rest to the top. */
  const refused = (message: string): void => {
    const longestFirst = [...fields].sort((a, b) => b.input.name.length - a.input.name.length)
    const named: Array<[Field, string]> = []
    const others: string[] = []
    for (const part of message.split('; ')) {
      const found = longestFirst.find(({ input }) => {
        const stem = `inputs/${input.name}`
        const after = part.charAt(stem.length)
        return part.startsWith(stem) && (after === ' ' || after === '/' || after === '')
      })
      if (found === undefined) others.push(part)
      else named.push([found, part])
    }
    showErrors(named, others)
  }

  const showErrors = (named: Array<[Field, string]>, others: string[]): void => {
    for (const [{ control, error }, message] of named) {
      error.textContent = error.hidden ? message : `${error.textContent ?? ''}; ${message}`
      error.hidden = false
      control.setAttribute('aria-invalid', 'true')
      control.setAttribute('aria-describedby', error.id)
    }
    errors.hidden = others.length === 0
    errors.replaceChildren(...others.length === 0 ? [] : [h('ul', null, ...others.map(message => h('li', null, message)))])
    if (others.length > 0) errors.focus()
    else fields.find(({ control }) => control.getAttribute('aria-invalid') === 'true')?.control.focus()
  }

  const clearErrors = (): void => {
    errors.hidden = true
    errors.replaceChildren()
    for (const { control, error, described } of fields) {
      error.hidden = true
      error.textContent = ''
      control.removeAttribute('aria-invalid')
      attr(control, 'aria-describedby', described === '' ? null : described)
    }
  }

  // Nothing to start until the catalog came.
  select.disabled = true
  button.disabled = true
  form.noValidate = true
  form.append(
    h('h2', null, 'Start a task'),
    errors,
    h('div', { class: 'field' }, h('label', { for: 'start-task' }, 'Task'), select, about),
    inputs,
    h('div', { class: 'actions' }, button))
  select.addEventListener('change', build)
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    void submit()
  })

  return {
    setCatalog (entries) {
      const previous = select.value
      catalog = entries
      select.replaceChildren(...entries.map(entry => h('option', { value: entry.name }, entry.name)))
      if (entries.some(entry => entry.name === previous)) select.value = previous
      select.disabled = entries.length === 0
      button.disabled = entries.length === 0
      build()
    },
  }
}

/** The field of one input: label, "(optional)", control, help text and a place for its error. */
function field (input: Input): Field {
  const id = uid('input')
  const control = controlFor(input, id)
  const helpId = input.help === '' ? '' : `${id}-help`
  const optionalId = input.required ? '' : `${id}-optional`
  const described = [optionalId, helpId].filter(Boolean).join(' ')
  attr(control, 'aria-describedby', described === '' ? null : described)
  const error = h('p', { id: `${id}-error`, class: 'field-error', hidden: true })
  const label = h('label', { for: id }, input.name)
  const optional = input.required ? null : h('span', { id: optionalId, class: 'optional' }, '(optional)')
  const help = helpId === '' ? null : h('p', { id: helpId, class: 'help' }, input.help)
  const wrapper = input.kind === 'boolean'
    ? h('div', { class: 'field check' }, h('div', { class: 'row' }, control, label, optional), help, error)
    : h('div', { class: 'field' }, h('div', { class: 'row' }, label, optional), control, help, error)
  wrapper.dataset['input'] = input.name
  return { input, control, described, error }
}

function controlFor (input: Input, id: string): Control {
  const { schema } = input
  const initial = schema.default
  switch (input.kind) {
    case 'choice': {
      const select = h('select', { id, name: input.name })
      if (!input.required || initial === undefined) select.append(h('option', { value: '' }, input.required ? 'Choose…' : '—'))
      input.choices.forEach((choice, index) => select.append(h('option', { value: index }, choiceText(choice))))
      const index = input.choices.findIndex(choice => choice === initial)
      if (index >= 0) select.value = String(index)
      return select
    }
    case 'boolean':
      return h('input', { id, name: input.name, type: 'checkbox', checked: initial === true })
    case 'integer':
    case 'number': {
      const { min, max, step } = bounds(input)
      return h('input', { id, name: input.name, type: 'number', inputmode: input.kind === 'integer' ? 'numeric' : 'decimal', min, max, step, value: typeof initial === 'number' ? initial : undefined })
    }
    case 'text': {
      const type = schema.format === 'email' || schema.format === 'date' ? schema.format : schema.format === 'uri' ? 'url' : 'text'
      return h('input', { id, name: input.name, type, autocomplete: 'off', value: typeof initial === 'string' ? initial : undefined, placeholder: schema.format === 'date-time' ? '2025-01-31T12:00:00Z' : undefined })
    }
    default:
      return h('textarea', { id, name: input.name, rows: 3, spellcheck: 'false', placeholder: schema.type === 'array' ? '[]' : schema.type === 'object' ? '{}' : 'JSON' },
        initial === undefined ? null : JSON.stringify(initial, null, 2))
  }
}

/** What to send for a field: a value, nothing (undefined: left out), or a message for it. */
function read ({ input, control }: Field): Read {
  if (input.kind === 'boolean') return { value: (control as HTMLInputElement).checked }
  const raw = control.value
  if (input.kind === 'choice') return raw === '' ? undefined : { value: input.choices[Number(raw)] }
  if (input.kind === 'text') return raw === '' && !input.required ? undefined : { value: raw }
  if (input.kind === 'integer' || input.kind === 'number') {
    if ((control as HTMLInputElement).validity.badInput) return { error: `inputs/${input.name} must be a number` }
    return raw === '' ? undefined : { value: Number(raw) }
  }
  if (raw.trim() === '') return undefined
  try {
    return { value: JSON.parse(raw) }
  } catch (err) {
    return { error: `inputs/${input.name} is not valid JSON: ${(err as Error).message}` }
  }
}
