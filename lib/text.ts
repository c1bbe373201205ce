/*
 * Client strings (task names, origins, keys of inputs) end up in error messages and so
 * in logs. Each is cut short and has its control characters escaped, so that a client
 * can neither flood a log line nor forge one (newlines, terminal escapes, bidi overrides).
 */

// One character at a time, no quantifier: linear whatever the input.
const unsafe = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

/** `text` cut to `max` characters (then `…`), control characters as `\uXXXX`. */
export function clip (text: string, max = 64): string {
  let cut = text
  if (text.length > max) {
    // Never split a surrogate pair: half of one is not text.
    const end = isHighSurrogate(text.charCodeAt(max - 1)) ? max - 1 : max
    cut = text.slice(0, end) + '…'
  }
  return cut.replace(unsafe, char => '\\u' + char.charCodeAt(0).toString(16).padStart(4, '0'))
}

function isHighSurrogate (code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff
}
