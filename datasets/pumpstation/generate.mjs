// Generates the bundled pump-station maintenance corpus (work orders as JSONL text, technician
// Q&A as chat JSONL) from a fixed seed: `node datasets/pumpstation/generate.mjs` rewrites
// workorders.jsonl and qa-chat.jsonl byte for byte. The hand-written procedures (*.txt) are not
// generated. Written for v4tune; CC0-1.0 (see ../README.md).
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(20250611);
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const text = (v) => (typeof v === 'function' ? v() : v);
const withArticle = (noun) => `${/^[aeiou]/.test(noun) ? 'an' : 'a'} ${noun}`;
const between = (lo, hi, digits = 0) => Number((lo + rand() * (hi - lo)).toFixed(digits));

const STATIONS = ['North Ridge', 'Mill Creek', 'Harbor Road', 'Eastfield', 'Quarry Lane', 'Willow Bend', 'Old Town', 'Airport East', 'Lakeside', 'Cedar Hill', 'Foundry Street', 'South Basin'];
const PUMP_TYPES = [
  { kind: 'end-suction centrifugal pump', kw: [15, 30, 45, 55], seal: 'single mechanical seal' },
  { kind: 'split-case centrifugal pump', kw: [75, 90, 110, 132], seal: 'packed gland' },
  { kind: 'submersible wastewater pump', kw: [7.5, 11, 15, 22], seal: 'double mechanical seal in an oil chamber' },
  { kind: 'vertical turbine pump', kw: [37, 55, 75], seal: 'stuffing box with graphite packing' },
  { kind: 'progressive cavity sludge pump', kw: [5.5, 7.5, 11], seal: 'cartridge mechanical seal' },
];
const TECHS = ['A. Okafor', 'B. Lindqvist', 'C. Moreau', 'D. Haddad', 'E. Tanaka', 'F. Oyelaran', 'G. Petrov', 'H. Castillo', 'I. Novak', 'J. Mensah'];

const FAULTS = [
  {
    symptom: 'high vibration at the drive-end bearing',
    reading: () => `Overall velocity ${between(7.1, 14, 1)} mm/s RMS on the DE bearing (alarm 7.1 mm/s), dominant peak at 1x running speed.`,
    cause: 'impeller imbalance from ragging and uneven wear',
    action: 'Isolated the pump, removed rags from the impeller eye, checked the wear ring clearance, and rebalanced the impeller on the bench.',
    after: () => `Vibration after repair ${between(1.2, 3.4, 1)} mm/s RMS.`,
    parts: ['impeller wear ring'],
  },
  {
    symptom: 'high vibration with a peak at 2x running speed',
    reading: () => `Axial vibration ${between(4.5, 9, 1)} mm/s RMS, 2x component dominant, coupling guard warm.`,
    cause: 'shaft misalignment between motor and pump after the last motor change',
    action: () => `Laser-aligned the motor to the pump. Offset corrected from ${between(0.25, 0.6, 2)} mm to ${between(0.01, 0.04, 2)} mm, angularity within 0.05 mm/100 mm. Replaced the coupling elastomer.`,
    after: () => `Axial vibration after alignment ${between(0.8, 2.2, 1)} mm/s RMS.`,
    parts: ['coupling elastomer insert'],
  },
  {
    symptom: 'mechanical seal leaking',
    reading: () => `Leak rate estimated at ${between(20, 90)} drops per minute at the seal gland; seal chamber temperature ${between(55, 80)} °C.`,
    cause: 'dry running during a low-suction event cracked the seal faces',
    action: 'Replaced the mechanical seal cartridge, flushed the seal chamber, and verified the low-level cut-out works before restarting.',
    after: () => 'No visible leakage after 30 minutes of running.',
    parts: ['mechanical seal cartridge', 'O-ring kit'],
  },
  {
    symptom: 'motor tripping on overload',
    reading: () => `Running current ${between(105, 125)}% of nameplate full-load amps; insulation resistance ${between(200, 900)} MΩ at 1000 V.`,
    cause: 'the pump was running far right on its curve after a downstream valve was left fully open',
    action: 'Throttled the discharge valve back to the commissioning position and reset the overload relay to the nameplate current.',
    after: () => `Running current after adjustment ${between(82, 96)}% of full-load amps.`,
    parts: [],
  },
  {
    symptom: 'low discharge pressure and reduced flow',
    reading: () => `Discharge pressure ${between(2.1, 3.4, 1)} bar against a design point of ${between(4.0, 5.5, 1)} bar; flow ${between(55, 75)}% of design.`,
    cause: 'worn impeller and opened-up wear ring clearance',
    action: 'Measured wear ring clearance and found it three times the design value. Replaced the impeller and both wear rings.',
    after: () => `Pressure restored to ${between(4.0, 5.4, 1)} bar at design flow.`,
    parts: ['impeller', 'wear rings (2)'],
  },
  {
    symptom: 'cavitation noise at the suction side',
    reading: () => `Crackling noise at the suction flange, suction pressure ${between(-0.6, -0.3, 2)} bar gauge, NPSH margin below 1 m.`,
    cause: 'partially blocked suction strainer',
    action: 'Isolated the suction line, removed and cleaned the strainer basket, and added the strainer differential pressure to the weekly round.',
    after: () => `Suction pressure after cleaning ${between(0.1, 0.5, 2)} bar gauge; noise gone.`,
    parts: ['strainer gasket'],
  },
  {
    symptom: 'bearing temperature alarm',
    reading: () => `Non-drive-end bearing at ${between(85, 98)} °C (alarm 85 °C); grease discoloured.`,
    cause: 'over-greasing: the bearing housing was packed full and churned the grease',
    action: 'Purged the old grease through the relief port, refilled to one third of the housing free volume, and corrected the greasing quantity in the maintenance plan.',
    after: () => `Bearing temperature settled at ${between(48, 62)} °C after two hours.`,
    parts: ['bearing grease, polyurea, 400 g'],
  },
  {
    symptom: 'pump failing to start on level demand',
    reading: () => `Control panel shows no run command; float switch reads open at ${between(1.2, 2.4, 1)} m wet-well level.`,
    cause: 'fat build-up on the high-level float switch',
    action: 'Cleaned the float switches, replaced the damaged float cable, and tested the start and stop levels with a temporary level gauge.',
    after: () => 'Duty pump starts and stops at the set levels.',
    parts: ['float switch with 10 m cable'],
  },
  {
    symptom: 'check valve slamming on pump stop',
    reading: () => `Pressure transient of ${between(6, 11, 1)} bar recorded on stop; audible slam in the valve chamber.`,
    cause: 'swing check valve closing late against reversed flow',
    action: 'Set the soft-stop ramp on the drive to 20 s and adjusted the check valve counterweight.',
    after: () => `Transient on stop reduced to ${between(0.6, 1.4, 1)} bar.`,
    parts: [],
  },
  {
    symptom: 'gland packing leaking excessively',
    reading: () => `Gland leakage about ${between(1, 3, 1)} L/min; gland follower bottomed out.`,
    cause: 'packing rings worn and hardened',
    action: 'Repacked the stuffing box with five new rings, staggering the joints by 90 degrees, and adjusted the gland for 40 to 60 drops per minute.',
    after: () => 'Leakage at 50 drops per minute and the gland stays cool to the touch.',
    parts: ['graphite packing, 5 rings'],
  },
];

function pad(n, w) { return String(n).padStart(w, '0'); }
function date(dayOffset) {
  const d = new Date(Date.UTC(2024, 0, 1) + dayOffset * 86400000);
  return d.toISOString().slice(0, 10);
}

function workOrder(i) {
  const station = pick(STATIONS);
  const pt = pick(PUMP_TYPES);
  const kw = pick(pt.kw);
  const unit = `P-${pad(Math.floor(rand() * 4) + 1, 2)}`;
  const f = pick(FAULTS);
  const hours = between(1.5, 9.5, 1);
  const runHours = Math.floor(between(2000, 60000));
  const lines = [
    `Work order WO-${pad(24000 + i, 6)} — ${station} pump station, unit ${unit}`,
    `Date: ${date(Math.floor(rand() * 540))}   Technician: ${pick(TECHS)}   Run hours: ${runHours}`,
    `Equipment: ${kw} kW ${pt.kind}, ${pt.seal}.`,
    '',
    `Reported: ${f.symptom}.`,
    `Findings: ${f.reading()}`,
    `Cause: ${f.cause}.`,
    `Action: ${text(f.action)}`,
    `Result: ${f.after()}`,
    `Parts used: ${f.parts.length ? f.parts.join(', ') : 'none'}. Labour: ${hours} h.`,
  ];
  if (rand() < 0.35) lines.push(`Follow-up: re-check ${pick(['vibration', 'bearing temperature', 'seal leakage', 'motor current', 'suction pressure'])} in ${pick([7, 14, 30])} days.`);
  return lines.join('\n');
}

// --- technician Q&A with worked answers -----------------------------------------------------------
const qa = [];

function affinity() {
  const n1 = pick([1450, 1480, 2900, 2950]);
  const ratio = pick([0.8, 0.85, 0.9, 0.95, 1.1]);
  const n2 = Math.round(n1 * ratio);
  const q1 = between(40, 400);
  const h1 = between(15, 60);
  const p1 = between(7.5, 110, 1);
  const q2 = (q1 * n2 / n1).toFixed(1);
  const h2 = (h1 * (n2 / n1) ** 2).toFixed(1);
  const p2 = (p1 * (n2 / n1) ** 3).toFixed(1);
  return [
    `A pump delivers ${q1} m³/h at ${h1} m head and draws ${p1} kW at ${n1} rpm. What do I get at ${n2} rpm on the drive?`,
    `Use the affinity laws for a fixed impeller diameter. Flow scales with speed, head with speed squared, power with speed cubed. The speed ratio is ${n2}/${n1} = ${(n2 / n1).toFixed(3)}.\n\n- Flow: ${q1} × ${(n2 / n1).toFixed(3)} ≈ ${q2} m³/h\n- Head: ${h1} × ${(n2 / n1).toFixed(3)}² ≈ ${h2} m\n- Power: ${p1} × ${(n2 / n1).toFixed(3)}³ ≈ ${p2} kW\n\nCheck that the new head still overcomes the static lift of the system; the affinity laws describe the pump, not where it meets the system curve.`,
  ];
}

function hydraulicPower() {
  const q = between(20, 500);
  const h = between(10, 80);
  const eta = between(0.55, 0.85, 2);
  const ph = (1000 * 9.81 * (q / 3600) * h / 1000).toFixed(2);
  const ps = (Number(ph) / eta).toFixed(2);
  return [
    `How much shaft power does a pump need for ${q} m³/h at ${h} m head if its efficiency is ${Math.round(eta * 100)}%?`,
    `Hydraulic power is ρ·g·Q·H: 1000 kg/m³ × 9.81 m/s² × (${q}/3600) m³/s × ${h} m ≈ ${ph} kW. Dividing by the pump efficiency of ${eta} gives a shaft power of about ${ps} kW. Size the motor with a margin above that (typically the next standard rating), and check the power at the end of the curve, where it is usually highest for a centrifugal pump.`,
  ];
}

function npsh() {
  const patm = 10.1;
  const lift = between(1, 4.5, 1);
  const loss = between(0.3, 1.5, 1);
  const temp = pick([10, 20, 30, 40]);
  const vap = { 10: 0.12, 20: 0.24, 30: 0.43, 40: 0.75 }[temp];
  const req = between(2, 5, 1);
  const avail = (patm - lift - loss - vap).toFixed(2);
  const margin = (Number(avail) - req).toFixed(2);
  const ok = Number(margin) >= 1;
  return [
    `Water at ${temp} °C, the pump sits ${lift} m above the sump level, suction line losses are ${loss} m and the datasheet says NPSHr is ${req} m. Will it cavitate?`,
    `NPSHa = atmospheric head − static suction lift − suction losses − vapour pressure head. At sea level the atmosphere is about ${patm} m of water and the vapour pressure of water at ${temp} °C is about ${vap} m, so NPSHa ≈ ${patm} − ${lift} − ${loss} − ${vap} = ${avail} m. The margin over NPSHr is ${margin} m. ${ok ? 'That is above the usual 1 m minimum margin, so it should run without cavitation at this duty point, but keep the suction strainer clean because its losses come straight off the margin.' : 'That is below a safe margin of at least 1 m, so expect cavitation: lower the pump, shorten or enlarge the suction line, or pick a pump with a lower NPSHr.'}`,
  ];
}

function troubleshoot() {
  const f = pick(FAULTS);
  return [
    `We have ${f.symptom} on ${withArticle(pick(PUMP_TYPES).kind)}. Where do I start?`,
    `First make the unit safe: stop it, lock out the drive and isolate suction and discharge. Then record what you measure before changing anything. ${f.reading()} In cases like this the most common cause is ${f.cause}. Typical fix: ${text(f.action)} Confirm the repair with a measurement, for example: ${f.after()} Write the before and after values in the work order so the trend is visible next time.`,
  ];
}

function alignmentTol() {
  const rpm = pick([1500, 3000]);
  const off = rpm === 1500 ? 0.09 : 0.06;
  const ang = rpm === 1500 ? 0.07 : 0.05;
  const meas = between(0.02, 0.2, 2);
  return [
    `What are acceptable shaft alignment tolerances for a ${rpm} rpm pump set? I measured ${meas} mm offset.`,
    `A common shop tolerance for a ${rpm} rpm coupled pump is about ${off} mm parallel offset and ${ang} mm per 100 mm angularity (excellent alignment is roughly half of that). Your ${meas} mm offset is ${meas <= off ? 'inside' : 'outside'} that limit${meas <= off ? ', so no correction is needed on that axis' : ', so shim or move the motor and measure again'}. Always correct soft foot first, and re-check alignment at operating temperature if the pump handles hot liquid.`,
  ];
}

function greaseQty() {
  const d = pick([40, 50, 60, 70, 80, 90]);
  const b = pick([15, 18, 20, 23, 25]);
  const g = (0.005 * d * b).toFixed(1);
  return [
    `How much grease should I add to a bearing with ${d} mm outer diameter and ${b} mm width?`,
    `A widely used rule for relubrication is G = 0.005 × D × B grams, with D the outer diameter and B the width in millimetres: 0.005 × ${d} × ${b} ≈ ${g} g per greasing. Add it slowly with the pump running if it is safe to do so, open the relief plug, and watch the bearing temperature for the next hour: a rise that does not settle means too much grease.`,
  ];
}

const MAKERS = [affinity, hydraulicPower, npsh, troubleshoot, alignmentTol, greaseQty];
const SYSTEMS = [
  'You are a maintenance assistant for a water utility\'s pump stations. Answer with concrete steps and numbers.',
  'You help field technicians maintain pumps. Be precise and safety-minded.',
];

for (let i = 0; i < 450; i++) {
  const turns = rand() < 0.25 ? 2 : 1;
  const messages = [];
  if (rand() < 0.6) messages.push({ role: 'system', content: pick(SYSTEMS) });
  for (let t = 0; t < turns; t++) {
    const [q, a] = pick(MAKERS)();
    messages.push({ role: 'user', content: q }, { role: 'assistant', content: a });
  }
  qa.push(JSON.stringify({ messages }));
}

const orders = [];
for (let i = 0; i < 600; i++) orders.push(JSON.stringify({ text: workOrder(i) }));

writeFileSync(join(here, 'workorders.jsonl'), `${orders.join('\n')}\n`);
writeFileSync(join(here, 'qa-chat.jsonl'), `${qa.join('\n')}\n`);
