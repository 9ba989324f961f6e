"""Memory of reading a big corpus for continued pre-training: does it stay flat as the file grows?

    python benchmarks/bench_corpus.py                  # 20 and 200 MB of paragraphs, 20 MB without blank lines
                                                       # (tiny word-level tokenizer; ~2 min on 1 core)
    python benchmarks/bench_corpus.py --quick          # 1 MB and 4 MB (seconds; tests/test_bench_corpus.py runs it)
    python benchmarks/bench_corpus.py --tokenizer smollm2-135m   # the real byte-level BPE tokenizer (~1.5x slower)
    python benchmarks/bench_corpus.py --sizes 20 200 --json out.json

  files      generated into a temporary folder (deleted afterwards): paragraphs of 16-200 English words drawn
             from a fixed list of ~400 common and academic words with Zipf-like frequencies, sentences of 8-25
             words with capitals and punctuation, a blank line between paragraphs (one document each,
             data.document_split auto -> paragraph); and one file with no blank line at all (one paragraph per
             line: a single 20 MB "document", which the reader cuts into pieces of about 128 KB).
  task       causal-lm, data.max_length 256, the defaults otherwise (validation 10%, test 20%, by text hash).
  tokenizer  `tiny` (default): a word-level tokenizer over the generator's own words (`tokenizers` WordLevel,
             lower-casing, whitespace pre-tokenizer, `</s>` as end-of-text), which knows every generated word;
             `smollm2-135m`: the built-in model's byte-level BPE.
  cases      each in a child process forked from the benchmark's own, which has imported the libraries (workbench's
             pre-training task, transformers, datasets), built the tokenizer and run prepare + encode once on a
             50 KB file (a warm-up: what loads or is allocated on first use is already there), then:
               baseline  `text = Path(f).read_text(); len(text)`: what holding the file as a string costs
               prepare   `CAUSAL_LM.prepare(cfg.data, 42, tokenizer=tok)`: the streamed scan (byte offsets and a hash
                         per document), the hash split, the data report (tokens counted exactly up to 20 million
                         characters, else from a sample of 4,000 documents; unknown-token share on 2,000)
               encode    prepare, then `CAUSAL_LM.encode(prep.train, tok, 256)`: every training document read back by
                         offset, tokenised in batches of 256 documents or 256K characters, joined with `</s>` and
                         cut into 256-token blocks, written to an Arrow file in 2,048-row chunks and memory-mapped
  memory     the child's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, Linux: KiB; a forked
             child's starts from its own size, not the parent's peak) and its size at the start (VmRSS); "added"
             is the difference: what the case itself cost. The Arrow cache goes to a temporary WORKBENCH_HOME,
             deleted after each case.
  claim      memory stays flat: the prepare+encode peak for the big file is close to the small file's and far
             below the file's size, while the baseline grows with the file (a str of ASCII text is ~1 byte/char).

Measured (2 CPUs shared, OMP_NUM_THREADS 1, MB; "added" = peak minus the child's start):

  tokenizer     file              read_text added  prepare added  prep+encode added  s prep+encode  documents
  tiny          20 MB paragraphs            38.1           65.8               71.8           14.8     47,363
  tiny         200 MB paragraphs           381.4          102.2              107.7           46.6    473,856
  tiny          20 MB no blank line         38.1           74.0               87.1            9.4   153 pieces
  smollm2-135m  20 MB paragraphs            38.2           46.7               58.3           17.0     47,363
  smollm2-135m 200 MB paragraphs           381.6           76.6              102.6           80.5    473,856
  smollm2-135m  20 MB no blank line         38.2           52.8               58.8           21.2   153 pieces

  From 20 to 200 MB the peak grew 1.10x (both tokenizers): what grows is ~90-110 bytes per document (offsets,
  hash, character count, the split), not the text; reading the 200 MB file into one string took 381 MB. Before
  the 128 KB cut (commit e112061), prepare alone on a 5 MB file without blank lines (one document) peaked 656 MB
  above its start, ~130 bytes per character held by the tokenizer (a 200 MB one would need ~26 GB); now 69 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_LENGTH, SEED = 256, 42
CASES = ("baseline", "prepare", "encode")
WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when if so no will more can who out up about into them
some could time than then only other its also new two these may like first any over such our after most even made
many what well where between both each under those while through being however because during since within
without among against known several often another three system data model models method methods results result
approach paper work language text word words sentence sentences corpus training trained learning task tasks
performance evaluation evaluate evaluated features feature using used use based show shows shown propose proposed
present presented analysis different large small set sets number information structure semantic syntactic
parsing parser translation machine neural network networks representation representations knowledge human
annotation annotated dataset datasets baseline baselines state art previous recent approaches experiments
experimental experiment accuracy score scores improvement improvements significant significantly compared
comparison example examples case cases problem problems question questions answer answers document documents
domain domains general specific particular important however therefore thus finally first second third
approach rule rules grammar lexical lexicon entity entities relation relations extraction classification
classifier label labels labelled supervised unsupervised source target pair pairs level levels context
contexts vector vectors embedding embeddings layer layers attention encoder decoder sequence sequences token
tokens vocabulary frequency distribution probability probabilities algorithm algorithms function functions
input output process processing natural speech dialogue discourse summary summarization generation generated
quality human judgments correlation measure measures metric metrics test tests development validation
corpora collection resources resource tool tools framework frameworks study studies research researchers
paper papers section sections table tables figure figures describe described description describes report
reported reports order form forms type types class classes category categories value values term terms
time times year years part parts way ways point points group groups people person world country government
city company market school university house family child children life day days home water money history""".split()


# --- the corpus file -------------------------------------------------------------------------------
def write_corpus(path: Path, megabytes: float, seed: int = 0, blank_lines: bool = True) -> int:
    """A text file of about `megabytes` MB (10^6 bytes): paragraphs separated by a blank line, or with
    `blank_lines=False` one paragraph per line and no blank line anywhere. Returns its size in bytes."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(WORDS))]  # Zipf-like: 'the' most often
    target = int(megabytes * 1_000_000)
    pool = rng.choices(WORDS, weights, k=200_000)  # drawn once, sliced at random offsets (fast and varied)
    end = "\n\n" if blank_lines else "\n"
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            sentences = []
            for _ in range(rng.randint(2, 8)):
                k = rng.randint(8, 25)
                i = rng.randrange(len(pool) - k)
                words = pool[i:i + k]
                sentences.append(words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".....?!"))
            para = " ".join(sentences) + end
            f.write(para)
            written += len(para)
    return path.stat().st_size


def tiny_tokenizer() -> Any:
    """A word-level tokenizer over `WORDS` (lower-cased text pieces; punctuation its own token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", ".", "?", "!", ",",
                                         *sorted(set(WORDS))])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", name_or_path="tiny-word-level")


# --- one case, in its own process -------------------------------------------------------------------
def _rss_now_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def load_tokenizer(tokenizer: str) -> Any:
    if tokenizer == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer
    from workbench.models import resolve_model_path
    return AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))


def run_case(case: str, file: str, tok: Any) -> dict[str, Any]:
    """Do `case` on `file`; the peak RSS, the RSS before, and seconds. Meant for a fresh (forked) process."""
    import resource

    from workbench.config import DataConfig
    from workbench.tasks.pretraining import CAUSAL_LM

    floor = _rss_now_kib()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"case": case}
    if case == "baseline":
        text = Path(file).read_text(encoding="utf-8")
        out["characters"] = len(text)
    else:
        cfg = DataConfig(source=file, max_length=MAX_LENGTH)
        prep = CAUSAL_LM.prepare(cfg, SEED, tokenizer=tok)
        d = prep.report.details
        out.update(documents=prep.report.rows_read, split_documents=d["documents"], tokens=d.get("tokens"),
                   tokens_exact=d.get("tokens_exact"), train_blocks=d.get("train_blocks"),
                   problems=prep.report.problems, warnings=prep.report.warnings)
        if case == "encode":
            ds = CAUSAL_LM.encode(prep.train, tok, MAX_LENGTH)
            out["blocks"] = len(ds)
            out["block_file_mb"] = round(sum(Path(f["filename"]).stat().st_size for f in ds.cache_files) / 1e6, 1)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["floor_mb"] = round(floor / 1024, 1)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _forked(case: str, file: Path, tok: Any, home: Path) -> dict[str, Any]:
    """`run_case` in a child forked from this process (libraries already imported, so no start-up cost; the
    child's ru_maxrss starts from its own resident size, not from this process's peak)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            os.environ["WORKBENCH_HOME"] = str(home)
            out = json.dumps(run_case(case, str(file), tok))
        except BaseException:  # noqa: B036  (whatever happens, the parent gets a message, not a hang)
            import traceback
            out, code = json.dumps({"error": traceback.format_exc()}), 1
        with os.fdopen(write, "w") as w:
            w.write(out)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as r:
        text = r.read()
    os.waitpid(pid, 0)
    res = json.loads(text) if text else {"error": "the child died without a word (killed for memory?)"}
    if "error" in res:
        raise SystemExit(f"case {case} on {file.name} failed:\n{res['error']}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 MB and 4 MB files, 1 MB without blank lines (a smoke test)")
    ap.add_argument("--sizes", type=float, nargs="+", help="sizes in MB of the files of paragraphs (default 20 200; "
                    "--quick: 1 4)")
    ap.add_argument("--no-blank-mb", type=float, help="size in MB of the file without blank lines (default 20; "
                    "--quick: 1; 0: none)")
    ap.add_argument("--tokenizer", default="tiny", help="tiny (default, word-level) or a built-in model's "
                    "name or a model folder, e.g. smollm2-135m")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as the CLI sets it; and a fork after parallel use would hang
    import datasets  # noqa: F401  (imported once here: every case is a child forked after these imports)
    import transformers  # noqa: F401

    import workbench.tasks.pretraining  # noqa: F401
    files = [(mb, True) for mb in (a.sizes or ([1, 4] if a.quick else [20, 200]))]
    no_blank = a.no_blank_mb if a.no_blank_mb is not None else (1 if a.quick else 20)
    files += [(no_blank, False)] if no_blank else []
    tok = load_tokenizer(a.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    rows: list[dict[str, Any]] = []
    print(f"Corpus memory: causal-lm prepare + encode, max_length {MAX_LENGTH}, tokenizer {a.tokenizer}; "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', '1')}", flush=True)
    t_all = time.perf_counter()
    try:
        # Warm up: the same steps once on a small file, here in the parent, so what the libraries load or allocate
        # on first use is in every child's starting size and "added" is what the file itself costs
        warm = work / "warm_up.txt"
        write_corpus(warm, 0.05)
        os.environ["WORKBENCH_HOME"] = str(work / "home_warm_up")
        run_case("encode", str(warm), tok)
        for mb, blank in files:
            shape = "paragraphs" if blank else "no blank lines"
            f = work / f"corpus_{mb:g}mb{'' if blank else '_lines'}.txt"
            t0 = time.perf_counter()
            size = write_corpus(f, mb, blank_lines=blank)
            print(f"  generated {f.name}: {size / 1e6:.1f} MB ({shape}) in {time.perf_counter() - t0:.1f}s", flush=True)
            row: dict[str, Any] = {"file_mb": round(size / 1e6, 1), "shape": shape}
            for case in CASES:
                home = work / f"home_{case}"
                r = _forked(case, f, tok, home)
                shutil.rmtree(home, ignore_errors=True)  # the Arrow block file: about 4 bytes a token
                row[case] = r
                print(f"    {case:8s} peak {r['peak_mb']:7.1f} MB (at start {r['floor_mb']:.1f}) "
                      f"in {r['seconds']:.1f}s", flush=True)
            rows.append(row)
            f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    added = lambda r, c: r[c]["peak_mb"] - r[c]["floor_mb"]  # noqa: E731
    print("\npeak resident memory in MB (ru_maxrss of a fresh process per case, forked after a warm-up; 'added': "
          "peak minus its size at the start)")
    head = (f"{'file MB':>7} {'shape':14} | {'read_text':>9} {'added':>6} | {'prepare':>7} {'added':>6} | "
            f"{'prep+encode':>11} {'added':>6} | {'s read':>6} {'s prep':>6} {'s p+enc':>7} | {'documents':>9} "
            f"{'blocks':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        b, p, e = r["baseline"], r["prepare"], r["encode"]
        print(f"{r['file_mb']:7.1f} {r['shape']:14} | {b['peak_mb']:9.1f} {added(r, 'baseline'):6.1f} | "
              f"{p['peak_mb']:7.1f} {added(r, 'prepare'):6.1f} | {e['peak_mb']:11.1f} {added(r, 'encode'):6.1f} | "
              f"{b['seconds']:6.1f} {p['seconds']:6.1f} {e['seconds']:7.1f} | {e['documents']:9,d} {e['blocks']:7,d}")
    para = [r for r in rows if r["shape"] == "paragraphs"]
    if len(para) >= 2:
        lo, hi = para[0], para[-1]
        more_docs = hi["encode"]["documents"] - lo["encode"]["documents"]
        grow = {c: added(hi, c) - added(lo, c) for c in CASES}
        span = hi["file_mb"] - lo["file_mb"]
        per_doc = grow["encode"] * 2 ** 20 / max(more_docs, 1)
        print(f"\nfrom {lo['file_mb']:g} MB to {hi['file_mb']:g} MB of paragraphs ({span:g} MB, {more_docs:,} "
              f"documents more): read_text {grow['baseline']:+.0f} MB, prepare {grow['prepare']:+.0f} MB, "
              f"prepare+encode {grow['encode']:+.0f} MB ({per_doc:.0f} bytes per added document)")
        ratio = hi["encode"]["peak_mb"] / lo["encode"]["peak_mb"]
        print(f"prepare+encode of {hi['file_mb']:g} MB: {added(hi, 'encode'):.0f} MB above its start, "
              f"{added(hi, 'encode') / hi['file_mb']:.0%} of the file's size (read_text: "
              f"{added(hi, 'baseline') / hi['file_mb']:.0%}); peak {ratio:.2f}x the {lo['file_mb']:g} MB file's")
    for r in rows:
        if r["shape"] != "paragraphs":
            print(f"{r['file_mb']:g} MB without blank lines (one paragraph, cut into {r['encode']['documents']:,} "
                  f"pieces of about 128 KB): prepare+encode {added(r, 'encode'):.0f} MB above its start")
    print(f"total {time.perf_counter() - t_all:.0f}s")
    if a.json:
        Path(a.json).write_text(json.dumps({"tokenizer": a.tokenizer, "quick": a.quick, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
