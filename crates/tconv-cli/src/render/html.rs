//! A single self-contained HTML page (no network, no external files) that steps through a
//! computation frame by frame, with play/pause/step controls and keyboard keys.

use anyhow::Result;
use serde_json::{json, Value};
use tconv::explain::{dot_steps, scatter_steps};
use tconv::Op;

use super::{num, rc, Problem};
use crate::canvas::{padded_input, Canvas};

fn grid(spatial: &[usize], values: &[String], kinds: &[&str]) -> Value {
    let (rows, cols) = rc(spatial);
    json!({ "rows": rows, "cols": cols, "values": values, "kinds": kinds })
}

/// The frames of one problem: a JSON object the page's script plays.
pub fn frames(p: &Problem, title: &str) -> Result<Value> {
    let g = &p.geometry;
    let k_sp = g.kernel_shape();
    let (input, output, frames) = match g.op {
        Op::ConvTranspose => transpose_frames(p),
        Op::Conv => conv_frames(p),
    };
    Ok(json!({
        "title": title,
        "op": g.op.name(),
        "input": input,
        "kernel": grid(&k_sp, &strs(&p.w), &vec!["value"; p.w.len()]),
        "output": output,
        "frames": frames,
    }))
}

/// Values as printed.
fn strs(v: &[f64]) -> Vec<String> {
    v.iter().map(|&x| num(x)).collect()
}

/// Numbers joined by `sep`, e.g. an index `1,2`.
fn joined<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// A transposed conv's input and output grids and its frames: each input element scales
/// the kernel, added into the uncropped output canvas (as in the SVG).
fn transpose_frames(p: &Problem) -> (Value, Value, Vec<Value>) {
    let g = &p.geometry;
    let in_sp: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let out_sizes: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let cv = Canvas::new(g);
    let ext = cv.extents.clone();
    let kinds: Vec<&str> = cv.kinds.iter().map(|k| k.class()).collect();
    let mut canvas = vec![p.bias.unwrap_or(0.0); ext.iter().product()];
    let mut frames = vec![json!({
        "text": "Start: the output canvas holds the bias (0 without one).",
        "formula": format!("size per axis: (in-1)·s - p_begin - p_end + d·(k-1) + output_padding + 1 = {}",
            joined(&out_sizes, " × ")),
        "hot_input": [], "hot_output": [], "output": strs(&canvas),
    })];
    for st in scatter_steps(g, &p.x, &p.w) {
        let mut hot = Vec::new();
        let mut terms = Vec::new();
        for c in &st.contributions {
            let at = cv.index(&c.position);
            canvas[at] += c.product;
            hot.push(at);
            if c.weight != 0.0 {
                terms.push(format!(
                    "({}) += {}·{}",
                    joined(&c.position, ","),
                    num(st.value),
                    num(c.weight)
                ));
            }
        }
        frames.push(json!({
            "text": format!("x[{}] = {} multiplies the whole kernel; the scaled kernel lands at ({}) (i·s - p_begin) and is added in.",
                joined(&st.index, ","), num(st.value), joined(&st.offset, ",")),
            "formula": if terms.is_empty() { "all products are 0".to_string() } else { terms.join(";  ") },
            "hot_input": [tconv::tensor::flat_index(&in_sp, &st.index)],
            "hot_output": hot,
            "output": strs(&canvas),
        }));
    }
    frames.push(json!({
        "text": if cv.cropped() { "Done: the cells outside the dashed border are cropped by the padding; the rest is y." } else { "Done: overlapping products have been summed; this is y." },
        "formula": format!("y = {}", strs(&p.output()).join(", ")),
        "hot_input": [], "hot_output": [], "output": strs(&canvas),
    }));
    (
        grid(&in_sp, &strs(&p.x), &vec!["value"; p.x.len()]),
        grid(&ext, &strs(&canvas), &kinds),
        frames,
    )
}

/// A value as a factor of a printed product: in parentheses where negative.
fn factor(v: f64) -> String {
    if v < 0.0 {
        format!("({})", num(v))
    } else {
        num(v)
    }
}

/// A conv's (padded) input and output grids and its frames: the kernel slides over the
/// input, each output a dot product.
fn conv_frames(p: &Problem) -> (Value, Value, Vec<Value>) {
    let g = &p.geometry;
    let (padded, sources) = padded_input(g);
    let values: Vec<String> = sources
        .iter()
        .map(|s| s.map_or_else(|| "0".to_string(), |i| num(p.x[i])))
        .collect();
    let kinds: Vec<&str> = sources
        .iter()
        .map(|s| if s.is_some() { "value" } else { "padding" })
        .collect();
    let out_sp: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let mut out = vec![String::new(); out_sp.iter().product()];
    let mut frames = vec![json!({
        "text": "Start: the kernel will slide over the (padded) input.",
        "formula": format!("size per axis: floor((in + p_begin + p_end - d·(k-1) - 1) / s) + 1 = {}",
            joined(&out_sp, " × ")),
        "hot_input": [], "hot_output": [], "output": out.clone(),
    })];
    let bias = p.bias.map(|b| vec![b]);
    for (oi, st) in dot_steps(g, &p.x, &p.w, bias.as_deref()).iter().enumerate() {
        let hot: Vec<usize> = st
            .terms
            .iter()
            .map(|t| {
                let j: Vec<usize> = t
                    .position
                    .iter()
                    .zip(&g.axes)
                    .map(|(&q, a)| (q + a.pad_begin) as usize)
                    .collect();
                tconv::tensor::flat_index(&padded, &j)
            })
            .collect();
        let terms: Vec<String> = st
            .terms
            .iter()
            .map(|t| match t.input {
                Some(v) => format!("{}·{}", factor(v), factor(t.weight)),
                None => format!("0·{}", factor(t.weight)),
            })
            .collect();
        out[oi] = num(st.value);
        let label = joined(&st.index, ",");
        let b = st
            .bias
            .map(|b| format!(" + {}", num(b)))
            .unwrap_or_default();
        frames.push(json!({
            "text": format!("y({label}): the kernel covers the highlighted window; multiply and add."),
            "formula": format!("y({label}) = {}{b} = {}", terms.join(" + "), num(st.value)),
            "hot_input": hot, "hot_output": [oi], "output": out.clone(),
        }));
    }
    (
        grid(&padded, &values, &kinds),
        grid(&out_sp, &out, &vec!["value"; out.len()]),
        frames,
    )
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 1.5rem; color: #111; background: #fafafa; max-width: 70rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.player { border: 1px solid #ccc; border-radius: 6px; padding: 1rem; background: #fff; margin-bottom: 1.5rem; }
.grids { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.grid { display: inline-grid; gap: 2px; }
.grid div { min-width: 2.2rem; height: 2.2rem; display: flex; align-items: center; justify-content: center;
  border: 1px solid #777; background: #fff; font-size: 0.85rem; }
.grid .inserted { background: #e3e3e3; } .grid .padding { background: #fff2b3; }
.grid .cropped { background: #f6c9c4; border-style: dashed; } .grid .extra { background: #c9e8c9; }
.grid .hot { background: #ffd27f !important; font-weight: bold; outline: 2px solid #d98c00; }
.label { font-weight: bold; margin-bottom: 0.3rem; }
.controls { margin: 0.8rem 0; display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; }
button { font-size: 1rem; padding: 0.3rem 0.8rem; }
.text { margin: 0.4rem 0; } .formula { font-family: "DejaVu Sans Mono", monospace; background: #f0f0f0; padding: 0.4rem; overflow-x: auto; }
.keys { color: #555; font-size: 0.85rem; }
"#;

const SCRIPT: &str = r#"
(function () {
  const data = JSON.parse(document.getElementById('tconv-frames').textContent);
  function makeGrid(el, g) {
    el.style.gridTemplateColumns = 'repeat(' + g.cols + ', auto)';
    el.innerHTML = '';
    g.values.forEach(function (v, i) {
      const c = document.createElement('div');
      c.textContent = v; c.className = g.kinds[i] || 'value';
      el.appendChild(c);
    });
  }
  data.players.forEach(function (p, n) {
    const root = document.getElementById('player-' + n);
    const [gin, gk, gout] = root.querySelectorAll('.grid');
    makeGrid(gin, p.input); makeGrid(gk, p.kernel); makeGrid(gout, p.output);
    const text = root.querySelector('.text'), formula = root.querySelector('.formula');
    const counter = root.querySelector('.counter'), play = root.querySelector('.play');
    let frame = 0, timer = null;
    function show(f) {
      frame = Math.max(0, Math.min(p.frames.length - 1, f));
      const fr = p.frames[frame];
      Array.from(gin.children).forEach(function (c, i) { c.className = (p.input.kinds[i] || 'value') + (fr.hot_input.includes(i) ? ' hot' : ''); });
      Array.from(gout.children).forEach(function (c, i) {
        c.textContent = fr.output[i];
        c.className = (p.output.kinds[i] || 'value') + (fr.hot_output.includes(i) ? ' hot' : '');
      });
      text.textContent = fr.text; formula.textContent = fr.formula;
      counter.textContent = 'step ' + frame + ' / ' + (p.frames.length - 1);
      root.dataset.frame = frame;
    }
    function stop() { if (timer) { clearInterval(timer); timer = null; play.textContent = 'Play'; } }
    function toggle() {
      if (timer) { stop(); return; }
      if (frame >= p.frames.length - 1) show(0);
      play.textContent = 'Pause';
      timer = setInterval(function () { if (frame >= p.frames.length - 1) stop(); else show(frame + 1); }, 900);
    }
    root.querySelector('.first').onclick = function () { stop(); show(0); };
    root.querySelector('.prev').onclick = function () { stop(); show(frame - 1); };
    root.querySelector('.next').onclick = function () { stop(); show(frame + 1); };
    root.querySelector('.last').onclick = function () { stop(); show(p.frames.length - 1); };
    play.onclick = toggle;
    root.addEventListener('keydown', function (e) {
      if (e.target.tagName === 'BUTTON' && (e.key === ' ' || e.key === 'Enter')) return;
      if (e.key === 'ArrowRight') { stop(); show(frame + 1); }
      else if (e.key === 'ArrowLeft') { stop(); show(frame - 1); }
      else if (e.key === 'Home') { stop(); show(0); }
      else if (e.key === 'End') { stop(); show(p.frames.length - 1); }
      else if (e.key === ' ') { toggle(); }
      else return;
      e.preventDefault();
    });
    show(0);
  });
})();
"#;

/// The page for one or more players (each a value from [`frames`]).
pub fn page(title: &str, players: &[Value]) -> String {
    let mut body = String::new();
    for (n, p) in players.iter().enumerate() {
        let t = p["title"].as_str().unwrap_or("");
        body.push_str(&format!(
            r#"<section class="player" id="player-{n}" tabindex="0" aria-label="{t}">
<h2>{t}</h2>
<div class="grids">
 <div><div class="label">{}</div><div class="grid" role="grid" aria-label="input"></div></div>
 <div><div class="label">kernel w</div><div class="grid" role="grid" aria-label="kernel"></div></div>
 <div><div class="label">output y</div><div class="grid" role="grid" aria-label="output"></div></div>
</div>
<div class="controls">
 <button class="first" aria-label="first step">⏮</button>
 <button class="prev" aria-label="previous step">◀ Step</button>
 <button class="play">Play</button>
 <button class="next" aria-label="next step">Step ▶</button>
 <button class="last" aria-label="last step">⏭</button>
 <span class="counter" aria-live="polite"></span>
</div>
<div class="text" aria-live="polite"></div>
<div class="formula"></div>
<div class="keys">Keys (click the panel first): ← → step, Space play/pause, Home/End first/last.</div>
</section>
"#,
            if p["op"] == "conv" { "input x (padded)" } else { "input x" }
        ));
    }
    let data = json!({ "players": players })
        .to_string()
        .replace("</", "<\\/");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<p>Yellow: padding; grey: zeros inserted between inputs; red, dashed: computed then cropped by padding; green: the extra row/column of output_padding; orange: the current step.</p>\n{body}<script type=\"application/json\" id=\"tconv-frames\">{data}</script>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
}
