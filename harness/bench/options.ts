/**
 * A numeric command-line option of the bench parts: `dflt` when absent, else a number in
 * min..max (an integer where asked), or an error naming the option.
 */
export function numberOption(name: string, raw: string | undefined, dflt: number, min: number, max: number, integer: boolean): number {
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
    throw new Error(`--${name}: "${raw}" is not ${integer ? 'an integer' : 'a number'} in ${min}..${max}`);
  return n;
}
