// The training settings shard-check.mjs and expert-shards.test.ts share: 3 AdamW steps of
// 2 micro-batches × 2 rows, lr 0.01 (cosine), clipping at 1.
export const SETTINGS = { steps: 3, batchRows: 2, gradAccum: 2, lr: 0.01, schedule: 'cosine', warmupSteps: 0, weightDecay: 0.01, maxGradNorm: 1, seed: 5 };
