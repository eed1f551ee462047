// A line diff (longest common subsequence) of two texts, for rule set versions. Rule sets
// are small (a few hundred lines at most: domain/limits.py bounds rules per set), so the
// quadratic table is fine; past LINES_MAX lines a side the diff is refused, not slow.
export const LINES_MAX = 4000;

// [{op: "same" | "add" | "del", line}] turning `before` into `after`.
export function diffLines(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  if (a.length > LINES_MAX || b.length > LINES_MAX) throw new Error(`diff refused: over ${LINES_MAX} lines`);
  const rows = a.length + 1;
  const cols = b.length + 1;
  const lcs = new Uint32Array(rows * cols);
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i * cols + j] = a[i] === b[j] ? lcs[(i + 1) * cols + j + 1] + 1 : Math.max(lcs[(i + 1) * cols + j], lcs[i * cols + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      out.push({ op: "same", line: a[i] });
      i++;
      j++;
    } else if (lcs[(i + 1) * cols + j] >= lcs[i * cols + j + 1]) {
      out.push({ op: "del", line: a[i++] });
    } else {
      out.push({ op: "add", line: b[j++] });
    }
  }
  while (i < a.length) out.push({ op: "del", line: a[i++] });
  while (j < b.length) out.push({ op: "add", line: b[j++] });
  return out;
}

// JSON with keys sorted at every level: two versions differ only where their data does.
export function canonicalJson(value) {
  return JSON.stringify(sortKeys(value), null, 2);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sortKeys(value[key])]));
  }
  return value;
}

// Rules by id: which were added, removed, changed between two versions.
export function ruleChanges(before, after) {
  const byId = (rules) => new Map(rules.map((rule) => [rule.id, canonicalJson(rule)]));
  const a = byId(before);
  const b = byId(after);
  return {
    added: [...b.keys()].filter((id) => !a.has(id)),
    removed: [...a.keys()].filter((id) => !b.has(id)),
    changed: [...b.keys()].filter((id) => a.has(id) && a.get(id) !== b.get(id)),
  };
}
