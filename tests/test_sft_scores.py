"""Scores of generated text: ROUGE against values computed by hand, the paired bootstrap of tuned - base chrF."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.tasks.causal_lm_sft.scoring import generation_scores, paired_bootstrap_chrf, rouge_scores


def test_rouge_against_values_computed_by_hand():
    # "the cats sat" vs "the cat sat on the mat", words, Porter stemming (cats -> cat): 3 of 3 predicted unigrams
    # match, 3 of 6 reference ones: F1 = 2 * 1 * 1/2 / (1 + 1/2) = 2/3; bigrams 2 of 2 and 2 of 5: F1 = 4/7; the
    # longest common subsequence is 3 tokens, so ROUGE-L = ROUGE-1 here.
    s = rouge_scores(["the cats sat", "a dog"], ["the cat sat on the mat", "a dog"])
    assert s["rouge_tokens"] == "word"
    assert s["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert s["rouge2"] == pytest.approx(100 * (4 / 7 + 1) / 2)
    assert s["rougeL"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    # Chinese, character by character: 我喜欢猫 vs 我喜欢狗。: unigrams 3 of 4 and 3 of 5, F1 = 2/3; bigrams
    # (我喜 喜欢 欢猫) vs (我喜 喜欢 欢狗 狗。): 2 of 3 and 2 of 4, F1 = 4/7; LCS 我喜欢 = 3: 2/3.
    s = rouge_scores(["我喜欢猫"], ["我喜欢狗。"])
    assert s["rouge_tokens"] == "char"
    assert (s["rouge1"], s["rouge2"], s["rougeL"]) == (pytest.approx(200 / 3), pytest.approx(400 / 7),
                                                       pytest.approx(200 / 3))
    # and they are among the split's scores, next to chrF and BLEU
    s = generation_scores(["我喜欢猫"], ["我喜欢狗。"])
    assert s["rouge1"] == pytest.approx(200 / 3) and s["bleu_tokenize"] == "zh" and "chrf" in s


BASE = ["a cat", "the dog ran", "hello world", "blue sky", "one two", "red car", "big house", "cold tea"]
REFS = ["the cat sat", "the dog ran far", "hello there world", "the sky is blue", "one two three",
        "a red car", "a big house", "hot tea"]


def test_paired_bootstrap_matches_resampling_by_hand():
    from sacrebleu.metrics import CHRF

    tuned = ["the cat sat", "the dog ran", "hello world", "the sky blue", "one two three", "red car", "big house",
             "tea"]
    out = paired_bootstrap_chrf(BASE, tuned, REFS, n_resamples=40, seed=3)
    # by hand: the same draws (numpy's seeded generator), both systems scored by sacreBLEU's corpus chrF on each
    idx = np.random.default_rng(3).integers(0, len(REFS), size=(40, len(REFS)))
    diffs = [CHRF().corpus_score([tuned[i] for i in d], [[REFS[i] for i in d]]).score
             - CHRF().corpus_score([BASE[i] for i in d], [[REFS[i] for i in d]]).score for d in idx]
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert (out["low"], out["high"]) == (pytest.approx(low), pytest.approx(high))
    full = generation_scores(tuned, REFS)["chrf"] - generation_scores(BASE, REFS)["chrf"]
    assert out["difference"] == pytest.approx(full) and out["low"] <= out["difference"] <= out["high"]
    assert out["excludes_zero"] == (low > 0 or high < 0) and out["n"] == 8
    assert paired_bootstrap_chrf(BASE, tuned, REFS, n_resamples=40, seed=3) == out  # seeded: the same interval
    assert paired_bootstrap_chrf(BASE, tuned, REFS, n_resamples=40, seed=4) != out


def test_paired_bootstrap_says_when_the_difference_is_real():
    same = paired_bootstrap_chrf(BASE, BASE, REFS, n_resamples=200)
    assert (same["difference"], same["low"], same["high"], same["excludes_zero"]) == (0, 0, 0, False)
    better = paired_bootstrap_chrf(BASE, REFS, REFS, n_resamples=200)  # tuned writes every reference exactly
    assert better["tuned"] == pytest.approx(100) and better["low"] > 0 and better["excludes_zero"]
    worse = paired_bootstrap_chrf(REFS, BASE, REFS, n_resamples=200)
    assert worse["high"] < 0 and worse["excludes_zero"]
    with pytest.raises(ValueError, match="one base and one tuned answer per reference"):
        paired_bootstrap_chrf(BASE[:3], BASE, REFS)
