"""How should the output bias of a new character start when a fine-tuning run extends the
vocabulary? Measures the held-out loss of a fine-tuned model at its start and after a few
iterations for each choice of ``finetune.NEW_ROW_BIAS``.

    PYTHONPATH=src python bench/finetune_rows.py [--iters 40]

The parent is a small corpus-vocabulary model trained on the head of tiny shakespeare; the child
text is the COVID-19 FAQ, which has digits, brackets, '@', curly quotes and more that
Shakespeare lacks (new rows). Same seed, same machine, one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import charloom
from charloom import finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# One torch thread: on a CPU shared with other work, two threads mostly wait for each other.
SMALL = dict(layers=1, hidden=128, embed=32, batch_size=16, seq_len=64, eval_every=1000, threads=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent-iters", type=int, default=200)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    head = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    faq = (DATA / "covid19-faq.txt").read_text(encoding="utf-8")
    held_out = faq[-len(faq) // 10 :]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "parent"
        config = charloom.TrainConfig().replace(**SMALL, iters=args.parent_iters, warmup=20)
        charloom.train(config, text=head, out=parent, console=False)
        for choice in ("min", "mean"):
            finetune.NEW_ROW_BIAS = choice  # the module default, switched for the experiment
            for iters in (0, args.iters):
                out = Path(tmp) / f"child-{choice}-{iters}"
                child = charloom.preset_config(init_from=str(parent), **SMALL, iters=max(iters, 1))
                charloom.train(child, text=faq, out=out, console=False, stop_at=iters)
                model = charloom.load(out, which="latest")
                new = len(model.vocab.chars) - len(charloom.load(parent).vocab.chars)
                result = model.evaluate(held_out)
                rows.append(
                    {"bias": choice, "iterations": iters, "new_rows": new, "loss": result.loss}
                )
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'bias':<6}{'iterations':>12}{'held-out loss':>16}")
    for r in rows:
        print(f"{r['bias']:<6}{r['iterations']:>12}{r['loss']:>16.4f}")


if __name__ == "__main__":
    main()
