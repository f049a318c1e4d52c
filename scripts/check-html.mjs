// Load a page written by `tconv explain … --html` / `tconv demo --html` in a DOM (jsdom),
// run its script, press the buttons and keys, and check what the page shows.
// Usage: node scripts/check-html.mjs page.html   (see scripts/check-html.sh)
import { readFileSync } from 'node:fs';
import { JSDOM } from 'jsdom';

const path = process.argv[2];
const html = readFileSync(path, 'utf8');
const dom = new JSDOM(html, { runScripts: 'dangerously' });
const doc = dom.window.document;
const data = JSON.parse(doc.getElementById('tconv-frames').textContent);
let failures = 0;
const check = (ok, what) => { if (!ok) { failures++; console.error('FAIL: ' + what); } };

data.players.forEach((p, n) => {
  const root = doc.getElementById('player-' + n);
  const grids = root.querySelectorAll('.grid');
  const out = () => Array.from(grids[2].children).map(c => c.textContent);
  check(root.dataset.frame === '0', `player ${n} starts at step 0`);
  check(root.querySelector('.formula').textContent === p.frames[0].formula, `player ${n} shows the first formula`);
  root.querySelector('.next').click();
  check(root.dataset.frame === '1', `player ${n}: Step moves to step 1`);
  check(root.querySelector('.text').textContent === p.frames[1].text, `player ${n}: step 1 text`);
  check(JSON.stringify(out()) === JSON.stringify(p.frames[1].output), `player ${n}: step 1 output grid`);
  const hot = Array.from(grids[0].children).map((c, i) => c.classList.contains('hot') ? i : -1).filter(i => i >= 0);
  check(JSON.stringify(hot) === JSON.stringify(p.frames[1].hot_input), `player ${n}: step 1 highlights its input cells`);
  root.dispatchEvent(new dom.window.KeyboardEvent('keydown', { key: 'End', bubbles: true }));
  check(root.dataset.frame === String(p.frames.length - 1), `player ${n}: End key jumps to the last step`);
  check(JSON.stringify(out()) === JSON.stringify(p.frames[p.frames.length - 1].output), `player ${n}: final output grid`);
  root.dispatchEvent(new dom.window.KeyboardEvent('keydown', { key: 'ArrowLeft', bubbles: true }));
  check(root.dataset.frame === String(p.frames.length - 2), `player ${n}: ArrowLeft steps back`);
  console.log(`player ${n} (${p.title}): ${p.frames.length} steps, final output ${out().join(' ')}`);
});
if (failures) { process.exit(1); }
console.log(`${path}: ok`);
