"""Greedy generation (``trajectory.interventions.steering.generate``, used by ``steer``)
against the same key-value-cached loop unembedded by TransformerLens itself, same run.

    python benchmarks/generate.py [--tokens 30] [--tiny]

TransformerLens's ``Unembed`` transposes ``W_U`` on every forward pass (670 MB for the
offline Gemma 3's 262k-token vocabulary) and unembeds every position of the prompt;
``generate`` unembeds the last position only, with ``W_U.T`` made once per call. Both
must produce the same tokens (checked and printed).
"""
from __future__ import annotations

import argparse
import time

import torch

from trajectory.interventions.steering import generate
from trajectory.pipeline import ORIGINAL_PROMPT


def reference_generate(model, prompt_ids: torch.Tensor, n: int) -> list[int]:
    """The same loop with TransformerLens's own logits at every step."""
    from transformer_lens import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    inp, out = prompt_ids[None], []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(inp, past_kv_cache=cache)[0, -1].float().argmax())
            out.append(nxt)
            inp = torch.tensor([[nxt]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of the offline one")
    args = ap.parse_args()
    if args.tiny:
        from trajectory.testing import tiny_model

        model, prompt = tiny_model(), "the final correct answer : max , mark and smith are in the room"
    else:
        from trajectory.model.load import load_model

        model, prompt = load_model("offline"), ORIGINAL_PROMPT
    ids = model.to_tokens(prompt)[0]
    generate(model, ids, 2, stop_at_eos=False)  # warm-up
    times = {}
    for name, fn in (("TransformerLens unembed", lambda: reference_generate(model, ids, args.tokens)),
                     ("trajectory generate", lambda: generate(model, ids, args.tokens, stop_at_eos=False))):
        t0 = time.perf_counter()
        tokens = fn()
        times[name] = (time.perf_counter() - t0, tokens)
    (t_ref, ref), (t_new, new) = times.values()
    print(f"{'tiny' if args.tiny else 'offline'} model, prompt of {len(ids)} tokens, {args.tokens} new tokens, "
          f"{torch.get_num_threads()} torch threads")
    for name, (seconds, _) in times.items():
        print(f"  {name:24s} {seconds:7.2f} s  {args.tokens / seconds:6.1f} tokens/s")
    print(f"  speed-up {t_ref / t_new:.2f}x; same tokens: {ref == new}")


if __name__ == "__main__":
    main()
