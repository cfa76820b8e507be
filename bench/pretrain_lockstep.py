"""Pretraining, bertdesk vs transformers' BertForPreTraining on the same
batches: same data stream (`PretrainingData`, dynamic masks), same shape,
dropout off, AdamW (eps 1e-6, decay 0.01 without LayerNorm and biases),
warmup then linear decay, clipping 1.0. Prints masked-LM and next-sentence
accuracy per window for both; they should learn at the same pace.

    KERAS_BACKEND=jax .venv/bin/python bench/pretrain_lockstep.py --steps 300
"""

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "wikitext2.test.raw"


def transformers_run(data, steps, lr, window, vocab_size, shape):
    import torch
    from transformers import BertConfig, BertForPreTraining, get_linear_schedule_with_warmup

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=shape["hidden_dim"],
                     num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
                     intermediate_size=shape["intermediate_dim"], hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(cfg).train()
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not any(k in n for k in ("bias", "LayerNorm"))],
               "weight_decay": 0.01},
              {"params": [p for n, p in named if any(k in n for k in ("bias", "LayerNorm"))],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-6)
    schedule = get_linear_schedule_with_warmup(opt, steps // 10, steps)
    rows, hits, total, nsp_hits, n = [], 0, 0, 0, 0
    for b in range(steps):
        x, y = data.batch(b)
        batch, seq = x["token_ids"].shape
        labels = torch.full((batch, seq), -100, dtype=torch.long)
        positions = torch.from_numpy(x["mask_positions"]).long()
        ids = torch.from_numpy(y["mlm_logits"]).long()
        for r in range(batch):
            valid = ids[r] >= 0
            labels[r, positions[r][valid]] = ids[r][valid]
        nsp = torch.from_numpy(y["nsp_logits"]).long()
        out = model(input_ids=torch.from_numpy(x["token_ids"]).long(),
                    token_type_ids=torch.from_numpy(x["segment_ids"]).long(),
                    attention_mask=torch.from_numpy(x["padding_mask"]).long(),
                    labels=labels, next_sentence_label=nsp)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        mask = labels >= 0
        hits += (out.prediction_logits.argmax(-1)[mask] == labels[mask]).sum().item()
        total += mask.sum().item()
        nsp_hits += (out.seq_relationship_logits.argmax(-1) == nsp).sum().item()
        n += batch
        if (b + 1) % window == 0:
            rows.append((b + 1, hits / total, nsp_hits / n))
            hits = total = nsp_hits = n = 0
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--corpus-bytes", type=int, default=60000, help="from the start of WikiText-2")
    args = p.parse_args()

    import keras

    import bertdesk
    from bertdesk.pretraining.data_writer import DataOptions, create_pretraining_data
    from bertdesk.pretraining.pretrain import PretrainConfig, run_pretrain
    from bertdesk.pretraining.pretraining_data import PretrainingData
    from bertdesk.pretraining.vocab import train_vocabulary

    work = Path(tempfile.mkdtemp(prefix="bench_pretrain_lockstep_"))
    corpus = work / "corpus.txt"
    corpus.write_bytes(CORPUS.read_bytes()[:args.corpus_bytes])
    tokenizer = train_vocabulary([corpus], vocab_size=4000)
    create_pretraining_data([corpus], tokenizer, work / "data",
                            DataOptions(masking="dynamic", document_pattern=r"^ = [^=].* = $"))
    shape = {k: bertdesk.preset_config("tiny")[k]
             for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim")}
    ours = run_pretrain(PretrainConfig(output=str(work / "bertdesk"), data=str(work / "data"),
                                       max_steps=args.steps, batch_size=args.batch_size,
                                       learning_rate=args.lr, log_every=args.window,
                                       save_every=args.steps, dropout=0.0))["history"]
    theirs = transformers_run(PretrainingData(work / "data", args.batch_size, seed=0), args.steps,
                              args.lr, args.window, tokenizer.vocabulary_size, shape)
    print(f"tiny BERT, {args.batch_size} x 128 tokens, lr {args.lr}, same batches; bertdesk on "
          f"{keras.backend.backend()}; masked-LM / next-sentence accuracy per {args.window} steps")
    print(f"{'step':>6} {'bertdesk MLM':>13} {'transformers MLM':>17} {'bertdesk NSP':>13} "
          f"{'transformers NSP':>17}")
    for h, (step, mlm, nsp) in zip(ours, theirs):
        print(f"{step:>6} {h['mlm_accuracy']:>13.3f} {mlm:>17.3f} {h['nsp_accuracy']:>13.3f} "
              f"{nsp:>17.3f}")


if __name__ == "__main__":
    main()
