/**
 * The raw text of top-level members of a JSON object, as the plugin
 * (tools/cni/ambient-redirect-cni.c) finds them: keys compared on their raw text (a key
 * written with escapes is another key), the last of duplicates wins. The agent uses it to
 * pass prevResult through byte for byte and to read the members the plugin reads, so that
 * both see the same values. Pure; the text must already be valid JSON (JSON.parse).
 */

const WS = new Set([' ', '\t', '\n', '\r']);

function skipWs(t: string, i: number): number {
  while (i < t.length && WS.has(t[i]!)) i++;
  return i;
}

/** i at an opening quote: the index just past the closing one. */
function skipString(t: string, i: number): number {
  for (i++; i < t.length; i++) {
    if (t[i] === '\\') i++;
    else if (t[i] === '"') return i + 1;
  }
  return t.length;
}

function skipValue(t: string, i: number): number {
  if (t[i] === '"') return skipString(t, i);
  if (t[i] === '{' || t[i] === '[') {
    let depth = 0;
    for (; i < t.length; i++) {
      const c = t[i];
      if (c === '"') i = skipString(t, i) - 1;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') {
        depth--;
        if (depth === 0) return i + 1;
      }
    }
    return t.length;
  }
  while (i < t.length && !WS.has(t[i]!) && t[i] !== ',' && t[i] !== '}' && t[i] !== ']') i++;
  return i;
}

/** Member name → its raw value text, for the wanted names present at the top level. */
export function topLevelMembers(text: string, names: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  let i = skipWs(text, 0);
  if (text[i] !== '{') return out;
  i = skipWs(text, i + 1);
  while (i < text.length && text[i] !== '}') {
    const k = i;
    i = skipString(text, i);
    const key = text.slice(k + 1, i - 1);
    i = skipWs(text, skipWs(text, i) + 1); // past ':'
    const v = i;
    i = skipValue(text, i);
    if (names.includes(key)) out.set(key, text.slice(v, i));
    i = skipWs(text, i);
    if (text[i] === ',') i = skipWs(text, i + 1);
  }
  return out;
}
