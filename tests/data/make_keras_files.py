"""Write `.keras` checkpoints (model + AdamW state after one step, as
`--resume` reads them) of a tiny classifier and pretraining model, their
outputs, and the weights after one more step on a fixed batch.

tests/data/keras_files_before_encode_positions/ was written by the code of
commit 567ac60 (task graphs that called the backbone as one layer):

    git worktree add /tmp/old 567ac60
    KERAS_BACKEND=jax PYTHONPATH=/tmp/old python tests/data/make_keras_files.py \
        tests/data/keras_files_before_encode_positions
"""
import sys
import numpy as np
import keras
import bertdesk
from bertdesk.pretraining.objectives import masked_lm_loss
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.training.optimization import bert_adamw

out = sys.argv[1]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def backbone():
    return bertdesk.BertBackbone(vocabulary_size=50, num_layers=2, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, max_sequence_length=16, dropout=0.0,
                                 attention_dropout=0.0)


def perturb(m):
    for w in m.weights:
        w.assign(w.numpy() + rng.normal(0, 0.2, w.shape).astype("float32"))


x = {"token_ids": rng.integers(0, 50, (2, 9)).astype("int32"),
     "segment_ids": (np.arange(9) >= 5).astype("int32")[None].repeat(2, 0),
     "padding_mask": np.ones((2, 9), "int32"),
     "mask_positions": np.array([[2, 4], [1, 6]], "int32")}
x["padding_mask"][1, 7:] = 0
clf_x = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
clf_y = np.array([2, 0], "int32")
pre_y = {"mlm_logits": np.array([[3, 7], [11, 5]], "int32"), "nsp_logits": np.array([1, 0], "int32")}

clf = BertTextClassifier(backbone(), num_classes=3)
perturb(clf)
clf.compile(optimizer=bert_adamw(1e-2, 10, warmup_ratio=0.0),
            loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
pre = bertdesk.BertPretrainingModel(backbone())
perturb(pre)
pre.compile(optimizer=bert_adamw(1e-2, 10, warmup_ratio=0.0),
            loss={"mlm_logits": masked_lm_loss,
                  "nsp_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
expected = {f"input_{k}": v for k, v in x.items()}
for name, model, mx, my in (("classifier", clf, clf_x, {"logits": clf_y}), ("pretraining", pre, x, pre_y)):
    model.train_on_batch(mx, my)
    outputs = model.predict_on_batch(mx)
    for k, v in outputs.items():
        expected[f"{name}_{k}"] = keras.ops.convert_to_numpy(v)
    model.save(f"{out}/{name}.keras")
    model.train_on_batch(mx, my)  # the step a resumed run would take next
    for w in model.weights:
        expected[f"{name}_after_{w.path}"] = keras.ops.convert_to_numpy(w)
for k, v in pre_y.items():
    expected[f"target_{k}"] = v
expected["target_logits"] = clf_y
np.savez(f"{out}/expected.npz", **expected)
print("written with", bertdesk.__file__)
