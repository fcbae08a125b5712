// The ascend backend: the native backend with its fused LoRA ops — the grouped routed experts
// (forward and backward), the shared expert, and linear / grouped linear with LoRA — and the
// Sinkhorn part of the mHC pre backward run on an Ascend NPU by the Ascend C kernels in
// kernels/ascend/ through the addon's ACL host code (native/ascend_*.cc; libascendcl.so, aclnn and
// the kernel library are loaded at run time). Every other op runs on the CPU kernels. The device
// LoRA ops take the CPU ops' arguments, so the backend is the native one over an addon whose four
// LoRA entries are the device's.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { V4tuneError } from '../../errors.js';
import type { Backend, F32, Saved } from '../ops.js';
import { loadAddon, rawWeight, tryLoadAddon, nativeUnavailableReason, type NativeAddon } from '../native/addon.js';
import { NativeBackend } from '../native/index.js';

interface AscendAddon extends NativeAddon {
  ascendProbe(kernelLib: string): { available: boolean; devices: number; reason: string };
  ascendOpen(kernelLib: string, deviceId: number, blockDim: number): void;
  ascendClose(): void;
  ascendRoutedExpertsForward: NativeAddon['routedExpertsForward'];
  ascendRoutedExpertsBackward: NativeAddon['routedExpertsBackward'];
  ascendLinearForward: NativeAddon['linearForward'];
  ascendLinearBackward: NativeAddon['linearBackward'];
  ascendSinkhornBackward(dL: F32, dC: F32, L: F32, T: number, n: number, iters: number, eps: number): Promise<void>;
}
/** What the native backend's mhcPreForward keeps (src/backend/native/index.ts MhcPreSaved). */
interface MhcPreSaved extends Saved { X: F32; mix: F32; fn: F32; scale: F32; base: F32; N: number; hc: number; d: number; iters: number; hcEps: number; normEps: number }

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
  // the NPU kernels recompute h1 and h3 in the backward (they take no kept activations)
  protected override readonly keepExpertHidden = false;
  constructor(addon: AscendAddon, device: number, cores: number) {
    super({
      ...addon,
      routedExpertsForward: addon.ascendRoutedExpertsForward,
      routedExpertsBackward: addon.ascendRoutedExpertsBackward,
      linearForward: addon.ascendLinearForward,
      linearBackward: addon.ascendLinearBackward,
    });
    this.name = `ascend (NPU ${device}, ${cores} AI cores; other ops on the CPU kernels)`;
  }
  // in the forward pass this was comb = Sinkhorn(L), L = m[2hc:]·scale2 + base[2hc:], m = (fn·x)·r
  // with x a token's X flattened (n = hc·d) and r = (mean(x²) + normEps)^-½. The CPU kernel gives
  // dX from dy and dpost; the comb part, with dm = Sinkhorn backward(dcomb, L)·scale2 on the NPU, adds
  //   dx += r·(dm · fn[2hc:]) − (Σ_k dm_k m_k)·r²/n · x
  override async mhcPreBackward(saved: Saved, dy: F32, dpost: F32, dcomb: F32): Promise<{ dX: F32 }> {
    if (saved.op !== 'mhcPre') throw new V4tuneError(`ascend backend: mhcPre backward got the saved context of ${saved.op}`);
    const s = saved as MhcPreSaved;
    const addon = this.addon as AscendAddon;
    const { N, hc, d } = s, nm = (2 + hc) * hc, n = hc * d, hh = hc * hc;
    const dX = new Float32Array(s.X.length);
    await addon.mhcPreBackward(dX, dy, dpost, null, s.mix, s.X, s.fn, s.scale, s.base, N, hc, d, true, s.iters, s.hcEps, s.normEps);
    const L = new Float32Array(N * hh), dL = new Float32Array(N * hh);
    for (let t = 0; t < N; t++) for (let k = 0; k < hh; k++) L[t * hh + k] = s.mix[t * nm + 2 * hc + k] * s.scale[2] + s.base[2 * hc + k];
    await addon.ascendSinkhornBackward(dL, dcomb, L, N, hc, s.iters, s.hcEps);
    const dmr = new Float32Array(N * hh), coef = new Float64Array(N);
    for (let t = 0; t < N; t++) {
      let sq = 0;
      for (let i = 0; i < n; i++) sq += s.X[t * n + i] ** 2;
      const r = 1 / Math.sqrt(sq / n + s.normEps);
      let dmm = 0;
      for (let k = 0; k < hh; k++) {
        const dm = dL[t * hh + k] * s.scale[2];
        dmr[t * hh + k] = dm * r;
        dmm += dm * s.mix[t * nm + 2 * hc + k];
      }
      coef[t] = (dmm * r * r) / n;
    }
    const fnComb = rawWeight('f32', s.fn.subarray(2 * hc * n, (2 * hc + hh) * n), null, hh, n);
    await addon.gemm(N, n, hh, 1, dmr, hh, 1, fnComb, false, 1, dX, n);
    for (let t = 0; t < N; t++) for (let i = 0; i < n; i++) dX[t * n + i] -= coef[t] * s.X[t * n + i];
    return { dX };
  }
  override dispose(): void {
    super.dispose();
    (this.addon as AscendAddon).ascendClose();
  }
}

/**
 * The ascend backend on NPU V4TUNE_ASCEND_DEVICE_ID (default 0), its kernels on V4TUNE_ASCEND_CORES
 * AI cores (default 20), or a V4tuneError saying what is missing.
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
