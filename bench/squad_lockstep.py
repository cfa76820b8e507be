"""SQuAD in lockstep: bertdesk and transformers trained on the same batches in
the same order, dropout off, same AdamW/schedule/clipping, then decoded by
the same n-best code. What remains is the implementation, not chance.

    KERAS_BACKEND=torch .venv/bin/python bench/squad_lockstep.py
"""
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import torch

import bertdesk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from squad_quality import split_articles
from bertdesk.data.squad import read_squad, squad_metrics
from bertdesk.data.qa import make_windows, decode
from bertdesk.data.batching import PaddedBatches, predict_batches
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer, SpanLoss
from bertdesk.training.optimization import bert_adamw
from transformers import BertForQuestionAnswering, get_linear_schedule_with_warmup
tmp = Path(tempfile.mkdtemp(prefix="bench_squad_lockstep_"))
train, held = split_articles(600, 300, tmp)
folder = str(bertdesk.bundled_checkpoint())
tr, va = read_squad(train), read_squad(held)
tok = bertdesk.load_tokenizer(folder)
w = make_windows(tok, tr.examples, 256, 96)
pb = PaddedBatches([(x.token_ids, x.segment_ids) for x in w], np.array([[x.start, x.end] for x in w], np.int32), batch_size=16, bucket=False, shuffle=True, seed=0)
N = len(pb)
keras.utils.set_random_seed(0)
m = BertQuestionAnswerer(bertdesk.load_backbone(folder))
for l in m._flatten_layers():
    if isinstance(l, keras.layers.Dropout): l.rate = 0.0
    if hasattr(l, "attention_dropout"): l.attention_dropout = 0.0
hf = BertForQuestionAnswering.from_pretrained(folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
with torch.no_grad():
    hf.qa_outputs.weight.copy_(torch.tensor(keras.ops.convert_to_numpy(m.classifier.kernel).T)); hf.qa_outputs.bias.zero_()
m.compile(optimizer=bert_adamw(1e-4, N, 0.1), loss={"logits": SpanLoss()})
no_decay = ("bias", "LayerNorm.weight")
groups = [{"params": [p for n, p in hf.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
          {"params": [p for n, p in hf.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
opt = torch.optim.AdamW(groups, lr=1e-4, eps=1e-8); sched = get_linear_schedule_with_warmup(opt, int(round(0.1 * N)), N)
hf.train()
for i in range(N):
    x, y = pb[i]
    lo = m.train_on_batch(x, y)
    o = hf(input_ids=torch.tensor(x["token_ids"]).long(), token_type_ids=torch.tensor(x["segment_ids"]).long(), attention_mask=torch.tensor(x["padding_mask"]).long(), start_positions=torch.tensor(y[:, 0]).long(), end_positions=torch.tensor(y[:, 1]).long())
    o.loss.backward(); torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
    if i % 10 == 0: print(i, N, f"{float(lo):.4f} {float(o.loss):.4f}", flush=True)
vw = make_windows(tok, va.examples, 256, 96)
vb = PaddedBatches([(x.token_ids, x.segment_ids) for x in vw], None, batch_size=64)
ours = predict_batches(m, vb)
hf.eval(); theirs = [None] * len(vw)
with torch.no_grad():
    for b, idx in enumerate(vb.batches):
        x = vb[b][0]
        o = hf(input_ids=torch.tensor(x["token_ids"]).long(), token_type_ids=torch.tensor(x["segment_ids"]).long(), attention_mask=torch.tensor(x["padding_mask"]).long())
        for r, j in enumerate(idx): theirs[j] = np.stack([o.start_logits[r].numpy(), o.end_logits[r].numpy()], -1)
for name, lg in (("bertdesk", ours), ("transformers", theirs)):
    ans, _ = decode(va.examples, vw, [l[:, 0] for l in lg], [l[:, 1] for l in lg])
    mm = squad_metrics(ans, va); print(name, "EM", round(mm["exact_match"], 2), "F1", round(mm["f1"], 2), flush=True)
