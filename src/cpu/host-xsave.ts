/**
 * The running CPU's XSAVE layout, read from CPUID leaf 0xD and XCR0 rather
 * than guessed from the vendor: hosts sharing a pool need not have the same
 * CPU, and even one vendor's models differ in which components they have.
 * Read once per process and cached.
 */
import {cpuid, osxsave, xgetbv} from '../sys/cpuid.js'
import {FXSAVE_SIZE, featuresOf, LEGACY_FEATURES, type XsaveComponent, type XsaveLayout} from './xsave-layout.js'

const XSAVE_LEAF = 0xd

let cached: XsaveLayout | undefined

/**
 * XCR0 (features the kernel enabled), the standard-format size CPUID reports
 * for them (subleaf 0 EBX: what PTRACE_GETREGSET NT_X86_XSTATE returns), and
 * each enabled component's size (EAX) and offset (EBX) from subleaf i.
 */
export function hostXsaveLayout(): XsaveLayout {
  if (cached) return cached
  if (cpuid(0).eax < XSAVE_LEAF || !osxsave()) {
    // No XSAVE: the kernel only has the 512-byte FXSAVE area.
    cached = {xcr0: LEGACY_FEATURES, size: FXSAVE_SIZE, components: []}
    return cached
  }
  const xcr0 = xgetbv(0)
  const components: XsaveComponent[] = featuresOf(xcr0 & ~LEGACY_FEATURES).map((feature) => {
    const leaf = cpuid(XSAVE_LEAF, feature)
    return {feature, offset: leaf.ebx, size: leaf.eax}
  })
  cached = {xcr0, size: cpuid(XSAVE_LEAF, 0).ebx, components}
  return cached
}
