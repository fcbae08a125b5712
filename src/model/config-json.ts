// config.json text as transformers reads it: its DeepseekV4Config is a strict dataclass that
// refuses an integer in a float field ("Field 'swiglu_limit' expected float, got int"), and JSON
// from JavaScript writes 10.0 as 10. Every field is kept; the float fields are written with a
// decimal point (10.0), as DeepSeek's release config.json writes them.

/** the top-level fields transformers 5.18's DeepseekV4Config types as float */
export const FLOAT_FIELDS: ReadonlySet<string> = new Set([
  'routed_scaling_factor', 'rope_theta', 'compress_rope_theta', 'hc_eps', 'swiglu_limit', 'rms_norm_eps',
  'router_aux_loss_coef', 'router_jitter_noise', 'initializer_range', 'attention_dropout', 'partial_rotary_factor',
]);

const MARK = '\u0000float:';

/** `cfg` as pretty JSON (2 spaces, trailing newline) with integer values of FLOAT_FIELDS written as `n.0` */
export function configJsonText(cfg: Record<string, unknown>): string {
  const text = JSON.stringify(cfg, function (this: unknown, key: string, value: unknown) {
    if (this === cfg && FLOAT_FIELDS.has(key) && typeof value === 'number' && Number.isInteger(value)) return `${MARK}${value}`;
    return value;
  }, 2);
  return `${text.replace(/"\\u0000float:(-?\d+)"/g, '$1.0')}\n`;
}
