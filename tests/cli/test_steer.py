"""``trajectory steer`` end to end on the tiny fixtures: the files equal the library's own
result, the page is self-contained and escapes token text, bad input writes nothing."""
from __future__ import annotations

import pytest

from trajectory.cli import main
from trajectory.interventions import Intervention, SteeringResult, steer

PROMPT = "mark gave flashlight to the dark room and"




def test_steer_writes_json_html_png_and_prints(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["steer", "--bank", str(tiny_bank_dir), "--prompt", PROMPT, "--intervene", "1:7:add:6",
            "--intervene", "2:3:clamp:4:generated", "--max-new-tokens", "5", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    got = SteeringResult.load(out / "steer.json")
    want = steer(tiny_model, tiny_bank, PROMPT,
                 [Intervention(1, 7, "add", 6.0), Intervention(2, 3, "clamp", 4.0, positions="generated")],
                 max_new_tokens=5)
    assert got.base_ids == want.base_ids and got.steered_ids == want.steered_ids
    assert got.kl == pytest.approx(want.kl, abs=1e-6)
    assert f"base:     {want.base_text}" in printed and f"steered:  {want.steered_text}" in printed
    page = (out / "steer.html").read_text(encoding="utf-8")
    assert "<script" not in page and "src=" not in page and "http" not in page  # self-contained
    assert page.count('class="tok"') == len(got.base_ids) + len(got.steered_ids)
    assert (out / "steer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_text_is_escaped():
    from trajectory.interventions.render import steer_html

    evil = "<img src=x onerror=alert(1)>"
    res = SteeringResult(prompt="p", prompt_ids=[1, 2], prompt_tokens=["<bos>", "&"], interventions=[],
                         base_ids=[5], steered_ids=[6], base_tokens=[evil], steered_tokens=["</p>"], base_text=evil,
                         steered_text="</p>", base_logprobs=dict(base=[-1.0], steered=[-2.0]),
                         steered_logprobs=dict(base=[-3.0], steered=[-0.5]), kl=[0.0, 0.1, 0.2],
                         kl_on_steered=[0.0, 0.1, 0.3], top_position=1,
                         promoted=[dict(id=5, token=evil, base_logprob=-1.0, steered_logprob=0.0, delta=1.0)],
                         suppressed=[], model_name="<b>m</b>")
    page = steer_html(res)
    assert evil not in page and "<b>m</b>" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;bos&gt;&amp;" in page


@pytest.mark.parametrize("extra,match", [
    (["--intervene", "1:7:nudge:1"], "unknown intervention mode 'nudge'"),
    (["--intervene", "9:7:add:1"], "layer"),
    (["--intervene", "1:640:add:1"], "feature 640 is out of range"),
    (["--intervene", "1:7:add:1:99"], "position 99 is beyond the sequence"),
    ([], "no interventions given"),
])
def test_bad_input_writes_nothing(tiny_preset, tiny_bank_dir, tmp_path, capsys, extra, match):
    out = tmp_path / "s"
    args = ["steer", "--bank", str(tiny_bank_dir), "--prompt", PROMPT, "--max-new-tokens", "3", "--out", str(out)]
    assert main(args + extra) == 1
    assert match in capsys.readouterr().err
    assert not out.exists()
