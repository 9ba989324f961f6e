"""Why SmolLM2 + LoRA learned little on Chinese reviews: a frozen-feature probe of what the head can read.

Embeds N texts with the pretrained SmolLM2 two ways — the hidden state the stock classification head reads
(the last real token) and the mean over all real tokens (`model.pooling: mean`) — then asks how far a head on
those frozen features gets: logistic regression on standardised features (the best linear head), and the
head alone trained as the trainer trains it (AdamW, warmup + linear decay, batches of 16, 63 steps) at
several learning rates. Measured on `chinese_reviews` (README, issue 13 item 3): the mean carries more of
the sentiment than the last token, and a fresh head at LoRA's learning rate (5e-4) does not move in 63 steps.

    python benchmarks/chinese_probe.py [SOURCE=chinese_reviews] [N=600] [MAX_LENGTH=96]

SOURCE is a built-in or a CSV with `text` and `label` columns (e.g. examples/make_chinese_long.py's file).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from workbench.assets import builtin_model_path
from workbench.data.io import read_table


def features(source: str, n: int, max_length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    df = read_table(source).df.drop_duplicates("text")
    df = df.sample(min(n, len(df)), random_state=0)
    labels = sorted(df["label"].astype(str).unique())
    y = df["label"].astype(str).map({name: i for i, name in enumerate(labels)}).to_numpy()
    folder = builtin_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    last, mean = [], []
    with torch.inference_mode():
        for i in range(0, len(df), 32):
            enc = tok(df["text"].iloc[i:i + 32].tolist(), truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state
            a = enc["attention_mask"]
            last.append(h[torch.arange(h.shape[0]), a.sum(1) - 1])  # right padding: the last real token
            mean.append((h * a[..., None]).sum(1) / a.sum(1, keepdim=True))
    return {"last token": torch.cat(last).numpy(), "mean of tokens": torch.cat(mean).numpy()}, y


def head_only(x_tr, y_tr, x_te, y_te, lr: float, steps: int = 63, batch: int = 16, seed: int = 0) -> float:
    torch.manual_seed(seed)
    head = torch.nn.Linear(x_tr.shape[1], int(y_tr.max()) + 1, bias=False)
    torch.nn.init.normal_(head.weight, std=0.02)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else (steps - s) / (steps - warm))
    xt, yt, g = torch.tensor(x_tr), torch.tensor(y_tr), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float((head(torch.tensor(x_te)).argmax(1).numpy() == y_te).mean())


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else "chinese_reviews"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    max_length = int(sys.argv[3]) if len(sys.argv) > 3 else 96
    t0 = time.time()
    feats, y = features(source, n, max_length)
    cut = int(len(y) * 0.7)
    print(f"{source}: {len(y)} texts, {max_length} tokens, features in {time.time() - t0:.0f}s; "
          f"majority class on the test part: {np.bincount(y[cut:]).max() / (len(y) - cut):.3f}")
    for name, x in feats.items():
        z = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
        lr_acc = LogisticRegression(C=0.1, max_iter=5000).fit(z[:cut], y[:cut]).score(z[cut:], y[cut:])
        print(f"{name}: logistic regression (standardised, C=0.1) {lr_acc:.3f}")
        for lr in (5e-4, 2e-3, 1e-2):
            accs = [head_only(x[:cut], y[:cut], x[cut:], y[cut:], lr, seed=s) for s in range(3)]
            print(f"{name}: head alone, lr {lr:g}, 63 steps: " + " ".join(f"{a:.3f}" for a in accs))
