"""Why SmolLM2 + LoRA with the quick settings learns little on long Chinese texts: a frozen-feature probe.

Embeds N texts with the pretrained SmolLM2 (the hidden state the classification head `score` reads: the
last non-padding token), then asks how far any head on those frozen features gets: logistic regression
(the best linear head), and the head alone trained like the trainer would (AdamW, warmup + linear decay,
batches of 16, 63 steps) at several learning rates. If neither beats always answering the biggest class,
the head's learning rate is not the problem: the features must change (LoRA steps) or see more text.

    python benchmarks/chinese_probe.py FILE.csv [N=700] [MAX_LENGTH=128]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from workbench.assets import builtin_model_path


def features(path: str, n: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    folder = builtin_model_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    df = pd.read_csv(path).sample(n, random_state=0)
    labels = sorted(df["label"].unique())
    y = df["label"].map({name: i for i, name in enumerate(labels)}).to_numpy()
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(labels), dtype=torch.float32)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, n, 32):
            enc = tok(df["text"].iloc[i:i + 32].tolist(), truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            h = model.model(**enc).last_hidden_state
            last = enc["attention_mask"].sum(1) - 1  # right padding: the last real token
            out.append(h[torch.arange(h.shape[0]), last])
    return torch.cat(out).numpy(), y


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
    path, n, max_length = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 700, \
        int(sys.argv[3]) if len(sys.argv) > 3 else 128
    t0 = time.time()
    x, y = features(path, n, max_length)
    cut = int(n * 4 / 7)
    x_tr, y_tr, x_te, y_te = x[:cut], y[:cut], x[cut:], y[cut:]
    print(f"features {x.shape} in {time.time() - t0:.0f}s; mean norm {np.linalg.norm(x, axis=1).mean():.1f}")
    print(f"majority class on the test part: {np.bincount(y_te).max() / len(y_te):.3f}")
    for c in (0.01, 0.1, 1.0):
        acc = LogisticRegression(C=c, max_iter=3000).fit(x_tr, y_tr).score(x_te, y_te)
        print(f"logistic regression C={c}: {acc:.3f}")
    for lr in (2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2):
        accs = [head_only(x_tr, y_tr, x_te, y_te, lr, seed=s) for s in range(3)]
        print(f"head alone, lr {lr:g}, 63 steps: " + " ".join(f"{a:.3f}" for a in accs))
