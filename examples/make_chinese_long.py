"""Build a 3-class long-text Chinese sentiment file from the built-in `chinese_reviews`.

Each text joins 2 to 5 reviews (no review is used twice, so no sentence is shared between texts):
`positive` texts join only positive reviews, `negative` only negative ones, `mixed` both kinds in a
random order. The draw asks for 49% / 30% / 21% (like the news-sentiment file of issue 13, where always
answering the biggest class scores about 0.49) and stops when a pool of reviews runs out: with seed 0
that gives 3,670 texts, 1,758 positive / 1,117 negative / 795 mixed (48% / 30% / 22%), median 242
characters and 402 SmolLM2 tokens, so a 64- or 128-token window sees only the first review or two.

    python examples/make_chinese_long.py [OUT.csv]     # default: chinese_long.csv
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from workbench.assets import load_builtin_dataset


def build(seed: int = 0, n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = load_builtin_dataset("chinese_reviews")
    df = df[df["text"].str.len().between(15, 300)]  # drop one-word lines and essays
    pools = {lab: list(rng.permutation(df.loc[df["label"] == lab, "text"].to_numpy())) for lab in ("pos", "neg")}
    rows = []
    for label in rng.choice(["positive", "negative", "mixed"], size=n, p=[0.49, 0.30, 0.21]):
        k = int(rng.integers(2, 6))
        if label == "mixed":
            n_pos = int(rng.integers(1, k))
            kinds = ["pos"] * n_pos + ["neg"] * (k - n_pos)
            rng.shuffle(kinds)
        else:
            kinds = ["pos" if label == "positive" else "neg"] * k
        if any(len(pools[x]) < kinds.count(x) for x in set(kinds)):
            break
        rows.append({"text": "".join(pools[x].pop() for x in kinds), "label": label})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "chinese_long.csv"
    frame = build()
    frame.to_csv(out, index=False)
    print(f"wrote {len(frame)} texts to {out}: {frame['label'].value_counts().to_dict()}, "
          f"median {int(frame['text'].str.len().median())} characters")
