/** Measurements the end-to-end tests collect, printed at the end of a suite (for the report). */
const measurements: string[] = []

export function note(line: string): void {
  measurements.push(line)
}

export function printMeasurements(title: string): void {
  if (measurements.length === 0) return
  process.stdout.write(`\n    ${title} measurements:\n${measurements.map((m) => `      ${m}`).join('\n')}\n`)
  measurements.length = 0
}
