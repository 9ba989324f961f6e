"""Warm latency of one attention map (all layers and heads) for a 128-token text.

    WORKBENCH_HOME=/tmp/wbhome python benchmarks/attention_latency.py [--quick] [--dtype float32 bfloat16]

Targets on a 2-core CPU: MiniLM <= 100 ms, SmolLM2-135M <= 1 s. Not a test: timings depend on the
machine and on whatever else runs on it, so the load average is printed next to each figure.
Each row also splits the time into tokenising, the forward pass and the copy to numpy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from workbench.attention import attention_maps, encode_text, load_for_attention

TARGETS_MS = {"minilm": 100.0, "smollm2-135m": 1000.0}
TEXT = ("The film opens with a long, quiet shot of the harbour, and for a while nothing much happens. Then the "
        "story finds its feet: the cast is strong, the script is sharp, and the ending lands. ") * 8


def _times_ms(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _median_ms(fn, warmup: int, repeats: int) -> float:
    return statistics.median(_times_ms(fn, warmup, repeats))


def bench(name: str, dtype: torch.dtype, warmup: int, repeats: int) -> dict:
    model, tok = load_for_attention(name, dtype=dtype)
    res = attention_maps(model, tok, TEXT, max_tokens=128)
    assert len(res.tokens) == 128 and res.truncated, "the benchmark text must fill 128 tokens"
    # The best time shows what the machine can do; the median what a user gets with other work running.
    times = _times_ms(lambda: attention_maps(model, tok, TEXT, max_tokens=128), warmup, repeats)
    total, best = statistics.median(times), min(times)
    # Breakdown: where the time goes (the forward pass, in practice).
    enc_ms = _median_ms(lambda: encode_text(tok, TEXT, max_tokens=128), 1, repeats)
    inputs = encode_text(tok, TEXT, max_tokens=128).tensors()
    with torch.inference_mode():
        fwd_ms = _median_ms(lambda: model(**inputs, output_attentions=True), 1, max(3, repeats // 2))
        out = model(**inputs, output_attentions=True)
        np_ms = _median_ms(lambda: torch.stack([a[0] for a in out.attentions]).float().numpy(), 1, repeats)
    return {"model": name, "dtype": str(dtype).replace("torch.", ""), "shape": res.attentions.shape,
            "median_ms": total, "best_ms": best, "tokenise_ms": enc_ms, "forward_ms": fwd_ms, "numpy_ms": np_ms,
            "load": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 3 timed calls instead of 2 and 10")
    ap.add_argument("--models", nargs="+", default=list(TARGETS_MS), help="built-in names or model folders")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    a = ap.parse_args()
    import transformers
    transformers.logging.set_verbosity_error()  # the base models' "new classifier head" report is expected
    transformers.logging.disable_progress_bar()
    warmup, repeats = (1, 3) if a.quick else (2, 10)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"median of {repeats} after {warmup} warm-up calls")
    missed = 0
    for name in a.models:
        for dt in a.dtype:
            r = bench(name, getattr(torch, dt), warmup, repeats)
            target = TARGETS_MS.get(name)
            verdict = "" if target is None else ("ok" if r["median_ms"] <= target else "MISSED")
            missed += verdict == "MISSED"
            print(f"{r['model']:14s} {r['dtype']:9s} attentions {r['shape']}  median {r['median_ms']:7.1f} ms "
                  f"(best {r['best_ms']:.1f})  target {target or '-'} ms: {verdict or 'n/a'}  "
                  f"tokenise {r['tokenise_ms']:.1f} ms, "
                  f"forward {r['forward_ms']:.1f} ms, to numpy {r['numpy_ms']:.1f} ms  [load avg {r['load']:.1f}]")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
