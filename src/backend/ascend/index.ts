// The ascend backend: the native backend with its fused LoRA ops — the grouped routed experts
// (forward and backward), the shared expert, and linear / grouped linear with LoRA — run on an
// Ascend NPU by the Ascend C kernels in kernels/ascend/ through the addon's ACL host code
// (native/ascend_*.cc; libascendcl.so and the kernel library are loaded at run time). Every other
// op runs on the CPU kernels. The device ops take the CPU ops' arguments, so the backend is the
// native one over an addon whose four LoRA entries are the device's.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { V4tuneError } from '../../errors.js';
import type { Backend } from '../ops.js';
import { loadAddon, tryLoadAddon, nativeUnavailableReason, type NativeAddon } from '../native/addon.js';
import { NativeBackend } from '../native/index.js';

interface AscendAddon extends NativeAddon {
  ascendProbe(kernelLib: string): { available: boolean; devices: number; reason: string };
  ascendOpen(kernelLib: string, deviceId: number, blockDim: number): void;
  ascendClose(): void;
  ascendExpertForward: NativeAddon['expertForward'];
  ascendExpertBackward: NativeAddon['expertBackward'];
  ascendLinearForward: NativeAddon['linearForward'];
  ascendLinearBackward: NativeAddon['linearBackward'];
}

const here = path.dirname(fileURLToPath(import.meta.url));
/** The kernel library kernels/ascend/CMakeLists.txt builds (V4TUNE_ASCEND_KERNELS overrides). */
export function ascendKernelLibrary(): string {
  return process.env.V4TUNE_ASCEND_KERNELS ?? path.join(here, '..', '..', '..', 'kernels', 'ascend', 'build', 'libv4tune_ascend_kernels.so');
}

/** Whether an Ascend device can be used here; reason says in one line why not. */
export function ascendAvailability(): { available: boolean; reason: string } {
  const addon = tryLoadAddon() as AscendAddon | null;
  if (!addon) return { available: false, reason: nativeUnavailableReason() };
  if (typeof addon.ascendProbe !== 'function') return { available: false, reason: 'the native addon was built without the Ascend host code (run `npm run build:native`)' };
  const p = addon.ascendProbe(ascendKernelLibrary());
  return { available: p.available, reason: p.reason };
}

class AscendBackend extends NativeBackend {
  override readonly name: string;
  constructor(addon: AscendAddon, device: number, cores: number) {
    super({
      ...addon,
      expertForward: addon.ascendExpertForward,
      expertBackward: addon.ascendExpertBackward,
      linearForward: addon.ascendLinearForward,
      linearBackward: addon.ascendLinearBackward,
    });
    this.name = `ascend (NPU ${device}, ${cores} AI cores; other ops on the CPU kernels)`;
  }
  override dispose(): void {
    super.dispose();
    (this.addon as AscendAddon).ascendClose();
  }
}

/**
 * The ascend backend on NPU V4TUNE_ASCEND_DEVICE_ID (default 0), its kernels on V4TUNE_ASCEND_CORES
 * AI cores (default 20, the smallest 910B part), or a V4tuneError saying what is missing.
 */
export async function createAscendBackend(): Promise<Backend> {
  const { available, reason } = ascendAvailability();
  if (!available) throw new V4tuneError(`backend ascend is not available: ${reason}`);
  const addon = loadAddon() as AscendAddon;
  const device = Number(process.env.V4TUNE_ASCEND_DEVICE_ID ?? 0), cores = Number(process.env.V4TUNE_ASCEND_CORES ?? 20);
  if (!Number.isInteger(device) || device < 0) throw new V4tuneError(`V4TUNE_ASCEND_DEVICE_ID must be a device number (got "${process.env.V4TUNE_ASCEND_DEVICE_ID}")`);
  if (!Number.isInteger(cores) || cores < 1) throw new V4tuneError(`V4TUNE_ASCEND_CORES must be a positive integer (got "${process.env.V4TUNE_ASCEND_CORES}")`);
  addon.ascendOpen(ascendKernelLibrary(), device, cores);
  return new AscendBackend(addon, device, cores);
}
