"""Renderings of a :class:`~trajectory.interventions.steering.SteeringResult`.

- :func:`steer_html`: one self-contained page (no scripts, no external files): base and
  steered continuations side by side, each generated token coloured by its log-prob
  under the steered model minus under the base model (green: steering made it more
  likely), the per-position KL as an inline SVG bar chart, and the top promoted /
  suppressed first tokens. Every token text is HTML-escaped.
- :func:`steer_png`: the KL chart and the log-prob differences as a PNG (matplotlib).
- :func:`write_steer_outputs`: ``steer.json``, ``steer.html`` and ``steer.png`` in a folder.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from trajectory.interventions.steering import SteeringResult

_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:70em}
.cols{display:flex;gap:2em}.col{flex:1}.tok{padding:1px 2px;border-radius:3px;white-space:pre-wrap}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
.prompt{color:#555}code{background:#f3f3f3}"""


def _colour(delta: float, scale: float = 3.0) -> str:
    """Green for a positive log-prob difference, red for a negative one (saturating at ±scale)."""
    a = min(abs(delta) / scale, 1.0) * 0.8
    return f"rgba(0,160,0,{a:.2f})" if delta >= 0 else f"rgba(220,0,0,{a:.2f})"


def _tokens(tokens: list[str], logprobs: dict[str, list[float]]) -> str:
    spans = []
    for tok, b, s in zip(tokens, logprobs["base"], logprobs["steered"]):
        title = f"log p base {b:.3f} · steered {s:.3f} · Δ {s - b:+.3f}"
        spans.append(f'<span class="tok" style="background:{_colour(s - b)}" title="{html.escape(title)}">'
                     f"{html.escape(tok)}</span>")
    return "".join(spans)


def _kl_svg(kl: list[float], prompt_length: int, width: int = 640, height: int = 120) -> str:
    """Bars of KL per position; prompt positions grey, generated ones blue."""
    top = max(max(kl, default=0.0), 1e-9)
    w = width / max(len(kl), 1)
    bars = []
    for i, v in enumerate(kl):
        h = (height - 15) * v / top
        fill = "#999" if i < prompt_length else "#3060c0"
        bars.append(f'<rect x="{i * w:.1f}" y="{height - 15 - h:.1f}" width="{max(w - 1, 1):.1f}" '
                    f'height="{h:.1f}" fill="{fill}"><title>position {i}: KL {v:.4g}</title></rect>')
    label = f'<text x="0" y="{height - 2}" font-size="11">positions 0–{len(kl) - 1} (max KL {top:.3g})</text>'
    return f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}{label}</svg>'


def _top_table(rows: list[dict]) -> str:
    body = "".join(f"<tr><td><code>{html.escape(r['token'])}</code></td><td>{r['base_logprob']:.3f}</td>"
                   f"<td>{r['steered_logprob']:.3f}</td><td>{r['delta']:+.3f}</td></tr>" for r in rows)
    return f"<table><tr><th>token</th><th>log p base</th><th>log p steered</th><th>Δ</th></tr>{body}</table>"


def steer_html(result: "SteeringResult") -> str:
    """The result as one self-contained HTML page (see the module docstring)."""
    ivs = "".join(f"<li><code>{html.escape(str(d))}</code></li>" for d in result.interventions)
    prompt = html.escape("".join(result.prompt_tokens))
    P = len(result.prompt_ids)
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>steering: {html.escape(result.model_name)}</title>
<style>{_CSS}</style></head><body>
<h1>Steering through SAE latents</h1><p>model <code>{html.escape(result.model_name)}</code></p>
<h2>Interventions</h2><ul>{ivs}</ul>
<p class="prompt">prompt: {prompt}</p>
<div class="cols"><div class="col"><h2>base</h2><p>{_tokens(result.base_tokens, result.base_logprobs)}</p></div>
<div class="col"><h2>steered</h2><p>{_tokens(result.steered_tokens, result.steered_logprobs)}</p></div></div>
<p>Token colour: log-prob under the steered model minus under the base model (green: more likely when
steered). Hover for the figures.</p>
<h2>KL(base ‖ steered) per position (prompt + base continuation)</h2>{_kl_svg(result.kl, P)}
<div class="cols"><div class="col"><h2>promoted first tokens</h2>{_top_table(result.promoted)}</div>
<div class="col"><h2>suppressed first tokens</h2>{_top_table(result.suppressed)}</div></div>
</body></html>
"""


def steer_png(result: "SteeringResult", path: str | Path) -> Path:
    """KL per position and the generated tokens' log-prob differences, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trajectory.io import atomic_path

    P = len(result.prompt_ids)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5))
    ax1.bar(range(len(result.kl)), result.kl, color=["#999" if i < P else "#3060c0" for i in range(len(result.kl))])
    ax1.set(title="KL(base ‖ steered) per position", xlabel="position", ylabel="KL (nats)")
    for name, lp in (("base continuation", result.base_logprobs), ("steered continuation", result.steered_logprobs)):
        ax2.plot([s - b for b, s in zip(lp["base"], lp["steered"])], marker="o", label=name)
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set(xlabel="generated token", ylabel="log p steered − log p base")
    ax2.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_steer_outputs(result: "SteeringResult", folder: str | Path) -> dict[str, Path]:
    """Write ``steer.json``, ``steer.html`` and ``steer.png`` into ``folder``; returns the paths."""
    from trajectory.io import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = dict(json=result.save(folder / "steer.json"), html=folder / "steer.html")
    with atomic_write(paths["html"]) as fh:
        fh.write(steer_html(result))
    paths["png"] = steer_png(result, folder / "steer.png")
    return paths
