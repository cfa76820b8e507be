"""Import and export of checkpoints: Hugging Face (safetensors and .bin),
Google's original TF checkpoints, keras-hub presets, bertdesk folders; and
every kind of bad input."""

import json
import shutil

import numpy as np
import pytest
from conftest import random_batch
from harness import to_np

import bertdesk
from bertdesk import BertPretrainingModel, CheckpointError
from bertdesk.cli import main as cli_main
from bertdesk.io import convert, read_checkpoint, save_pretrained
from bertdesk.io.formats import detect_format

HF_TINY = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=32)


def write_vocab(folder, size=120):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + [f"w{i}" for i in range(size - len(specials))]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    """A randomly initialised transformers BertForPreTraining, saved both as
    safetensors and as pytorch_model.bin."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**HF_TINY, attn_implementation="eager")).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(folder)
    write_vocab(folder)
    binfolder = tmp_path_factory.mktemp("hf_tiny_bin")
    shutil.copy(folder / "config.json", binfolder)
    shutil.copy(folder / "vocab.txt", binfolder)
    torch.save(model.state_dict(), binfolder / "pytorch_model.bin")
    return model, folder, binfolder


def hf_outputs(model, batch, mask_positions):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(batch["token_ids"], dtype=torch.long),
                    token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(batch["padding_mask"], dtype=torch.long),
                    output_hidden_states=True)
    mlm = out.prediction_logits.numpy()
    mlm = np.take_along_axis(mlm, mask_positions[..., None], axis=1)
    return out.hidden_states[-1].numpy(), mlm, out.seq_relationship_logits.numpy()


def assert_same_as_hf(model, hf_model, atol=1e-5):
    batch = random_batch(seq=12)
    positions = np.array([[1, 3], [2, 5], [0, 4]], "int32")
    seq, mlm, nsp = hf_outputs(hf_model, batch, positions)
    out = model({**batch, "mask_positions": positions})
    mask = batch["padding_mask"].astype(bool)
    enc = model.backbone(batch)["sequence_output"]
    np.testing.assert_allclose(to_np(enc)[mask], seq[mask], atol=atol)
    np.testing.assert_allclose(to_np(out["mlm_logits"]), mlm, atol=atol)
    np.testing.assert_allclose(to_np(out["nsp_logits"]), nsp, atol=atol)


def test_hf_safetensors_with_heads(hf_tiny):
    hf_model, folder, _ = hf_tiny
    assert_same_as_hf(BertPretrainingModel.from_pretrained(folder), hf_model)


def test_hf_pytorch_bin(hf_tiny, tmp_path):
    import torch

    hf_model, _, binfolder = hf_tiny
    assert read_checkpoint(binfolder).weights_file.name == "pytorch_model.bin"
    assert_same_as_hf(BertPretrainingModel.from_pretrained(binfolder), hf_model)
    # the format before PyTorch 1.6 (not a zip: its storages cannot be
    # mapped, so it is read whole)
    legacy = copy_folder(binfolder, tmp_path / "legacy")
    torch.save(hf_model.state_dict(), legacy / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    assert isinstance(read_checkpoint(legacy).tensors, dict)
    assert_same_as_hf(BertPretrainingModel.from_pretrained(legacy), hf_model)


def test_pickled_code_in_bin_is_refused(tmp_path, hf_tiny):
    import torch

    shutil.copy(hf_tiny[1] / "config.json", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"embeddings.word_embeddings.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to load"):
        read_checkpoint(tmp_path)


def google_name(name):
    """Canonical name -> (Google TF variable name, transpose?), written from
    google-research/bert's modeling.py variable scopes."""
    special = {"cls.predictions.bias": "cls/predictions/output_bias",
               "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
               "cls.seq_relationship.bias": "cls/seq_relationship/output_bias"}
    if name in special:
        return special[name], False
    parts = name.replace("encoder.layer.", "encoder.layer_").split(".")
    last = parts[-1]
    transpose = False
    if parts[-2] == "LayerNorm":
        parts[-1] = "gamma" if last == "weight" else "beta"
    elif parts[-2].endswith("_embeddings"):
        parts = parts[:-1]
    elif last == "weight":
        parts[-1], transpose = "kernel", True
    prefix = [] if parts[0] == "cls" else ["bert"]
    return "/".join(prefix + parts), transpose


@pytest.fixture(scope="module")
def google_tiny(hf_tiny, tmp_path_factory):
    """A real TF1 checkpoint (tf.compat.v1.train.Saver), as Google published
    BERT, with optimizer slots that the loader must skip."""
    import tensorflow as tf
    from safetensors.numpy import load_file

    hf_model, hf_folder, _ = hf_tiny
    folder = tmp_path_factory.mktemp("uncased_L-2_H-16_A-2")
    tensors = load_file(str(hf_folder / "model.safetensors"))
    config = json.loads((hf_folder / "config.json").read_text())
    (folder / "bert_config.json").write_text(json.dumps(
        {k: config[k] for k in list(HF_TINY) + ["hidden_act", "hidden_dropout_prob",
                                                "attention_probs_dropout_prob",
                                                "type_vocab_size", "initializer_range"]}))
    write_vocab(folder)
    with tf.Graph().as_default():
        variables = []
        for name, value in tensors.items():
            if name.endswith("position_ids") or name.startswith("cls.predictions.decoder"):
                continue
            gname, transpose = google_name(name.removeprefix("bert."))
            value = value.T if transpose else value
            variables.append(tf.compat.v1.Variable(value, name=gname))
            variables.append(tf.compat.v1.Variable(np.zeros_like(value), name=gname + "/adam_m"))
        variables.append(tf.compat.v1.Variable(7, name="global_step", dtype=tf.int64))
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "bert_model.ckpt"), write_meta_graph=False)
    return hf_model, folder


@pytest.mark.parametrize("head", ["output", "cls/squad/output"])
def test_google_fine_tuned_checkpoint_loads_its_backbone(google_tiny, tmp_path, head):
    """run_classifier.py (`output_weights`, `output_bias`) and run_squad.py
    (`cls/squad/output_*`) save their head beside the backbone, and
    TensorFlow's Adam its slots (`Adam`, `Adam_1`, `beta1_power`): such a
    checkpoint was refused as "unknown tensor"; its backbone now loads, the
    head set aside as a transformers folder's is."""
    import shutil

    import tensorflow as tf

    hf_model, pretrained = google_tiny
    folder = tmp_path / "fine_tuned"
    folder.mkdir()
    for name in ("bert_config.json", "vocab.txt"):
        shutil.copy(pretrained / name, folder / name)
    reader = tf.train.load_checkpoint(str(pretrained / "bert_model.ckpt"))
    with tf.Graph().as_default():
        variables = []
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            variables.append(tf.compat.v1.Variable(value, name=name))
            if name.startswith("bert/") and "adam" not in name:
                variables += [tf.compat.v1.Variable(np.zeros_like(value), name=f"{name}/{slot}")
                              for slot in ("Adam", "Adam_1")]
        variables += [tf.compat.v1.Variable(np.ones((3, 16), np.float32), name=f"{head}_weights"),
                      tf.compat.v1.Variable(np.ones(3, np.float32), name=f"{head}_bias"),
                      tf.compat.v1.Variable(0.9, name="beta1_power"),
                      tf.compat.v1.Variable(0.999, name="beta2_power")]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "model.ckpt"), global_step=5, write_meta_graph=False)
    tensors = read_checkpoint(folder).tensors
    kind = "classifier" if head == "output" else "qa_outputs"
    assert tensors.shape(f"{kind}.weight") == (3, 16)
    assert not any("Adam" in k or "power" in k for k in tensors)
    backbone = bertdesk.load_backbone(folder)
    np.testing.assert_allclose(to_np(backbone.encoder_layers[0].intermediate.kernel),
                               hf_model.bert.encoder.layer[0].intermediate.dense.weight
                               .detach().numpy().T, atol=0)
    # converted, its backbone goes (no labels to make a task model of: said)
    with pytest.warns(UserWarning, match=rf"the fine-tuned head \({kind}.bias, {kind}.weight\) "
                                         "is left out"):
        convert(folder, tmp_path / "hf", to="hf")
    np.testing.assert_array_equal(
        to_np(bertdesk.load_backbone(tmp_path / "hf").encoder_layers[0].intermediate.kernel),
        to_np(backbone.encoder_layers[0].intermediate.kernel))


def test_google_checkpoint_without_tensorflow_and_in_bfloat16(google_tiny, monkeypatch):
    """Without TensorFlow a Google checkpoint is a CheckpointError naming the
    file (it was a bare ModuleNotFoundError); bfloat16 weights (ml_dtypes,
    numpy kind "V") read as float32 as every other float (they stayed bf16
    and `convert` wrote files of mixed dtypes)."""
    import sys

    import ml_dtypes

    from bertdesk.io import formats

    value = formats._as_float32(np.arange(3, dtype=ml_dtypes.bfloat16))
    assert value.dtype == np.float32 and value.tolist() == [0.0, 1.0, 2.0]
    assert formats._as_float32(np.arange(3)).dtype == np.arange(3).dtype  # counters stay
    _, folder = google_tiny
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(CheckpointError, match=r"bert_model.ckpt.index: a Google TF checkpoint "
                                              r"is read with TensorFlow, which cannot be"):
        read_checkpoint(folder)


def test_google_tf_checkpoint(google_tiny, monkeypatch):
    from bertdesk.io import formats

    hf_model, folder = google_tiny
    ckpt = read_checkpoint(folder)
    assert ckpt.format == "google"
    assert not any("adam" in k or "global_step" in k for k in ckpt.tensors)
    # read lazily too: shapes from the index, in the canonical (out, in) layout
    assert ckpt.tensors.shape("encoder.layer.0.intermediate.dense.weight") == (32, 16)
    openings = []
    open_reader = formats._open_google
    monkeypatch.setattr(formats, "_open_google",
                        lambda index: openings.append(index) or open_reader(index))
    backbone = bertdesk.load_backbone(folder)
    assert len(openings) == 1  # one reader for the whole (small) checkpoint
    np.testing.assert_allclose(to_np(backbone.encoder_layers[0].intermediate.kernel),
                               hf_model.bert.encoder.layer[0].intermediate.dense.weight
                               .detach().numpy().T, atol=0)
    assert_same_as_hf(BertPretrainingModel.from_pretrained(folder), hf_model)
    assert bertdesk.load_tokenizer(folder).lowercase is True  # "uncased" in the folder name


def test_keras_hub_preset(tmp_path):
    import keras_hub

    kh = keras_hub.models.BertBackbone(vocabulary_size=120, num_layers=2, num_heads=2,
                                       hidden_dim=16, intermediate_dim=32,
                                       max_sequence_length=32)
    # every weight away from its initial value (zero biases, unit LayerNorm),
    # so a reader that swaps or drops one shows
    rng = np.random.default_rng(4)
    kh.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                    for w in kh.get_weights()])
    kh.save_to_preset(str(tmp_path))
    write_vocab(tmp_path)
    vocab = (tmp_path / "vocab.txt").read_text().split()
    keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True).save_to_preset(str(tmp_path))
    assert read_checkpoint(tmp_path).format == "keras_hub"
    ours = bertdesk.load_backbone(tmp_path)
    batch = random_batch(seq=12)
    mask = batch["padding_mask"].astype(bool)
    theirs = kh(batch)
    # keras-hub's tanh GELU: 1.1e-4 apart at most here (torch, JAX, TensorFlow);
    # a reader that swaps the query and key biases, the two LayerNorms of a
    # layer, or drops a bias, is 0.1 or more away
    np.testing.assert_allclose(to_np(ours(batch)["sequence_output"])[mask],
                               to_np(theirs["sequence_output"])[mask], atol=1e-3)
    np.testing.assert_allclose(to_np(ours(batch)["pooled_output"]),
                               to_np(theirs["pooled_output"]), atol=1e-3)
    assert bertdesk.load_tokenizer(tmp_path).vocabulary == vocab
    # a preset keras-nlp (keras-hub's former name) wrote: read as keras-hub's (it was taken
    # for a transformers folder, "missing config fields")
    config = tmp_path / "config.json"
    config.write_text(config.read_text().replace("keras_hub.src", "keras_nlp.src"))
    assert "keras_nlp" in config.read_text() and read_checkpoint(tmp_path).format == "keras_hub"
    np.testing.assert_allclose(to_np(bertdesk.load_backbone(tmp_path)(batch)["pooled_output"]),
                               to_np(theirs["pooled_output"]), atol=1e-3)


def test_export_to_google_and_keras_hub_read_back_by_their_own_libraries(minilm_folder,
                                                                         google_tiny, tmp_path):
    """`convert --to google` writes Google's layout (TensorFlow reads its
    variables by their release names), `--to keras_hub` a preset keras-hub
    loads; bertdesk reads both back to the same numbers. Heads travel in the
    Google layout; a keras-hub backbone preset holds none (said), and no
    task model goes to either."""
    import warnings

    import keras_hub
    import tensorflow as tf

    from bertdesk.io.writers import canonical_to_google
    from bertdesk.io.formats import google_to_canonical
    from bertdesk.io.mapping import canonical_name

    batch = bertdesk.load_tokenizer(minilm_folder)(["the export reads back", "as it was"],
                                                   max_length=12)
    x = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    mask = x["padding_mask"].astype(bool)
    expected = to_np(bertdesk.load_backbone(minilm_folder)(x)["sequence_output"])
    for to in ("google", "keras_hub"):
        assert cli_main(["convert", str(minilm_folder), str(tmp_path / to), "--to", to]) == 0
        assert read_checkpoint(tmp_path / to).format == to
        again = bertdesk.load_backbone(tmp_path / to)
        np.testing.assert_array_equal(to_np(again(x)["sequence_output"]), expected)
        assert bertdesk.load_tokenizer(tmp_path / to).vocabulary == \
            bertdesk.load_tokenizer(minilm_folder).vocabulary
        # the same pieces, accents stripped as the uncased source does (keras-hub's
        # tokenizer keeps them unless told: "Héllo café" read back as [UNK]s)
        accented = ["Héllo, café crème à Zürich"]
        assert bertdesk.load_tokenizer(tmp_path / to)(accented, max_length=16)["token_ids"] \
            .tolist() == bertdesk.load_tokenizer(minilm_folder)(accented, max_length=16)[
                "token_ids"].tolist()
    pieces = keras_hub.models.BertTokenizer.from_preset(str(tmp_path / "keras_hub"))(
        "Héllo café")  # keras-hub's own tokenizer reads the export alike
    ours = bertdesk.load_tokenizer(minilm_folder)(["Héllo café"], max_length=16)
    ours = ours["token_ids"][0][ours["padding_mask"][0].astype(bool)][1:-1]  # no [CLS], [SEP]
    assert to_np(pieces).astype(int).tolist() == ours.tolist()
    reader = tf.train.load_checkpoint(str(tmp_path / "google" / "bert_model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == [384, 1536]
    assert shapes["bert/embeddings/LayerNorm/gamma"] == [384]
    theirs = keras_hub.models.BertBackbone.from_preset(str(tmp_path / "keras_hub"))(x)
    np.testing.assert_allclose(to_np(theirs["sequence_output"])[mask], expected[mask],
                               atol=5e-3)  # keras-hub's tanh GELU
    for name in list(ckpt_names := read_checkpoint(minilm_folder).tensors):
        google, transpose = canonical_to_google(name)
        back, back_transpose = google_to_canonical(google)
        assert (canonical_name(back), back_transpose) == (name, transpose)
    assert len(ckpt_names) > 100

    _, pretrained = google_tiny  # with both heads: they come back in the Google layout
    assert cli_main(["convert", str(pretrained), str(tmp_path / "heads"), "--to", "google"]) == 0
    source, copy = read_checkpoint(pretrained).tensors, read_checkpoint(tmp_path / "heads").tensors
    assert set(copy) == set(source) and any(k.startswith("cls.") for k in copy)
    for k in source:
        np.testing.assert_array_equal(copy[k], source[k])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert cli_main(["convert", str(pretrained), str(tmp_path / "kh"), "--to",
                         "keras_hub"]) == 0
    assert any("heads are left out" in str(w.message) for w in said)
    assert cli_main(["convert", str(pretrained), str(tmp_path / "kh"), "--to", "keras_hub",
                     "--overwrite"]) == 2  # a preset is not replaced file by file
    # an epsilon other than BERT's travels in bert_config.json (it was dropped: 1e-12 read back)
    odd = bertdesk.BertBackbone(vocabulary_size=120, num_layers=1, hidden_dim=16, num_heads=2,
                                intermediate_dim=32, layer_norm_epsilon=1e-5)
    save_pretrained(odd, tmp_path / "eps", format="google")
    assert bertdesk.load_backbone(tmp_path / "eps").layer_norm_epsilon == 1e-5


def test_export_to_hf_loads_in_transformers(minilm_folder, tmp_path, capsys):
    import torch
    from transformers import BertModel

    out = tmp_path / "export"
    assert cli_main(["convert", str(minilm_folder), str(out), "--to", "hf"]) == 0
    # again into the now full folder: refused, the advice naming the flag
    assert cli_main(["convert", str(minilm_folder), str(out), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: folder exists and is not empty (use --overwrite)" in err, err
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.txt",
                                              "tokenizer_config.json"}
    ref = BertModel.from_pretrained(str(minilm_folder)).eval()
    exported = BertModel.from_pretrained(str(out)).eval()
    batch = bertdesk.load_tokenizer(out)(["an exported model", "x"], max_length=12)
    ids = {"input_ids": torch.tensor(batch["token_ids"], dtype=torch.long),
           "attention_mask": torch.tensor(batch["padding_mask"], dtype=torch.long)}
    with torch.no_grad():
        np.testing.assert_allclose(exported(**ids).last_hidden_state.numpy(),
                                   ref(**ids).last_hidden_state.numpy(), atol=1e-6)


def test_export_with_heads_loads_as_bert_for_pretraining(hf_tiny, tmp_path):
    from transformers import BertForPreTraining

    hf_model, folder, _ = hf_tiny
    model = BertPretrainingModel.from_pretrained(folder)
    save_pretrained(model.backbone, tmp_path / "out", bertdesk.load_tokenizer(folder),
                    format="hf", extra_tensors=model.head_tensors())
    again = BertForPreTraining.from_pretrained(str(tmp_path / "out"),
                                               attn_implementation="eager").eval()
    assert_same_as_hf(model, again)


def test_bertdesk_format_roundtrip_and_cli(hf_tiny, tmp_path, capsys):
    hf_model, folder, _ = hf_tiny
    assert cli_main(["convert", str(folder), str(tmp_path / "bd")]) == 0
    assert read_checkpoint(tmp_path / "bd").format == "bertdesk"
    assert_same_as_hf(BertPretrainingModel.from_pretrained(tmp_path / "bd"), hf_model)
    assert cli_main(["info", str(tmp_path / "bd")]) == 0
    assert "L2/H16/A2/FFN32" in capsys.readouterr().out


# === Bad input ===
def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_and_bfloat16_safetensors(hf_tiny, tmp_path):
    """Checkpoints published in shards (`model.safetensors.index.json`) and
    in bfloat16 load as the float32 file does (bf16 to its rounding)."""
    import torch
    from safetensors.torch import load_file, save_file

    hf_model, folder, _ = hf_tiny
    tensors = load_file(str(folder / "model.safetensors"))
    sharded = copy_folder(folder, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(sharded / shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, ns in shards.items() for n in ns}}))
    assert read_checkpoint(sharded).weights_file.name == "model.safetensors.index.json"
    assert_same_as_hf(BertPretrainingModel.from_pretrained(sharded), hf_model)

    half = copy_folder(folder, tmp_path / "bf16")
    save_file({n: t.to(torch.bfloat16) if t.is_floating_point() else t
               for n, t in tensors.items()}, str(half / "model.safetensors"))
    word = "embeddings.word_embeddings.weight"
    backbone = bertdesk.load_backbone(half)
    expected = tensors["bert." + word].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(to_np(backbone.embeddings.token_embedding.embeddings),
                                  expected)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_weight_files_are_read_one_tensor_at_a_time(hf_tiny, tmp_path, monkeypatch, weights):
    """Checking a safetensors or PyTorch zip checkpoint reads what the files
    say of their tensors only; loading it reads each tensor once, when it is
    assigned (never every tensor first: a fresh model plus the whole file in
    memory is twice the weights)."""
    from bertdesk.io import formats

    reads, openings = [], []
    if weights == "safetensors":
        read = formats._read_safetensor

        def counting(path, name):
            reads.append(name)
            return read(path, name)

        monkeypatch.setattr(formats, "_read_safetensor", counting)
    else:  # a mapping of the file, reused for 64 MB of reads while loading
        open_file = formats._open_torch_bin

        def counting_opener(path):
            openings.append(path)
            read_one = open_file(path)
            return lambda name: reads.append(name) or read_one(name)

        monkeypatch.setattr(formats, "_open_torch_bin", counting_opener)
    folder = copy_folder(hf_tiny[1 if weights == "safetensors" else 2], tmp_path / "m")
    ckpt = read_checkpoint(folder)
    assert reads == []
    assert ckpt.tensors.shape("embeddings.word_embeddings.weight") == (120, 16)
    backbone = bertdesk.load_backbone(folder)
    backbone_names = [n for n in ckpt.tensors if not n.startswith("cls.")
                      and not n.endswith("position_ids")]
    assert sorted(reads) == sorted("bert." + n for n in backbone_names)
    assert len(openings) == (0 if weights == "safetensors" else 1)
    np.testing.assert_array_equal(to_np(backbone.pooler.dense.kernel),
                                  ckpt.tensors["pooler.dense.weight"].T)
    if weights == "bin":  # reopened once the budget of bytes is read
        names = backbone_names[:3]
        for budget, expected in ((1, 3), (1 << 30, 1)):
            openings.clear()
            with ckpt.tensors.kept_open(budget=budget):
                for name in names:
                    ckpt.tensors[name]
            assert len(openings) == expected


def test_a_file_changed_after_reading_is_refused(hf_tiny, tmp_path):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    ckpt = read_checkpoint(folder)
    other = copy_folder(hf_tiny[1], tmp_path / "other")
    data = (other / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data + b" ")
    with pytest.raises(CheckpointError,
                       match="model.safetensors: the file changed after the checkpoint was read"):
        ckpt.tensors["pooler.dense.weight"]


def _pending_variables():
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("uninitialized_variables") or []


def test_loading_draws_no_random_weights_and_leaves_nothing_pending(hf_tiny, tmp_path,
                                                                     monkeypatch):
    """Checkpoint loading builds the model without drawing the weights it is
    about to overwrite; a weight the checkpoint lacks (here the pooler) still
    gets its initializer's value; and nothing is left for Keras to
    initialise later, after a load that finished or one that failed."""
    import keras
    from safetensors.numpy import load_file, save_file

    draws = []
    normal = keras.initializers.RandomNormal.__call__

    def counting(self, shape, dtype=None):
        draws.append(tuple(shape))
        return normal(self, shape, dtype=dtype)

    monkeypatch.setattr(keras.initializers.RandomNormal, "__call__", counting)
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    backbone = bertdesk.load_backbone(folder)
    # (Keras' shape inference reads placeholders of the dense kernels; no
    # value is drawn for a variable: the embeddings, never read there, show it)
    assert not any(shape in draws for shape in ((120, 16), (2, 16)))
    assert _pending_variables() == []

    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "pooler" not in k},
              str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="no pooler weights"):
        no_pooler = bertdesk.load_backbone(folder, initializer_range=0.5)
    kernel = to_np(no_pooler.pooler.dense.kernel)
    assert 0.3 < kernel.std() < 0.7  # drawn with the given initializer_range
    np.testing.assert_array_equal(to_np(no_pooler.pooler.dense.bias), np.zeros(16))
    np.testing.assert_array_equal(to_np(no_pooler.embeddings.token_embedding.embeddings),
                                  to_np(backbone.embeddings.token_embedding.embeddings))
    assert _pending_variables() == []

    from bertdesk.io import formats

    read = formats._read_safetensor

    def failing(path, name):
        if "layer.1" in name:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} (disk error)")
        return read(path, name)

    monkeypatch.setattr(formats, "_read_safetensor", failing)
    with pytest.raises(CheckpointError, match="layer.1.*disk error"):
        bertdesk.load_backbone(copy_folder(hf_tiny[1], tmp_path / "failing"))
    assert _pending_variables() == []
    with keras.StatelessScope():  # would initialise anything left pending
        pass


def test_missing_folder_and_missing_weights(tmp_path, hf_tiny):
    with pytest.raises(CheckpointError, match="nowhere: no such folder"):
        bertdesk.load_backbone(tmp_path / "nowhere")
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(hf_tiny[1] / "config.json", folder)
    with pytest.raises(CheckpointError, match="noweights: config.json found but no weights"):
        bertdesk.load_backbone(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty: not a checkpoint folder"):
        bertdesk.load_backbone(empty)


def test_config_that_does_not_match_the_weights(tmp_path, hf_tiny):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        bertdesk.load_backbone(folder)
    msg = str(err.value)
    assert "model.safetensors" in msg
    assert "'encoder.layer.0.intermediate.dense.weight' has shape (32, 16)" in msg
    assert "expects (64, 16)" in msg


def test_unknown_and_missing_tensors(tmp_path, hf_tiny):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["bert.encoder.layer.0.adapter.weight"] = np.zeros((4, 4), "float32")
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        bertdesk.load_backbone(folder)
    msg = str(err.value)
    assert "unknown tensor 'encoder.layer.0.adapter.weight'" in msg
    assert "missing tensors 'encoder.layer.1.output.dense.bias'" in msg


def test_vocab_of_the_wrong_size(tmp_path, hf_tiny):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    write_vocab(folder, size=100)
    with pytest.raises(CheckpointError, match=r"vocab.txt: 100 tokens, but .*120 rows"):
        bertdesk.load_backbone(folder)


def test_corrupt_files(tmp_path, hf_tiny):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        bertdesk.load_backbone(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        bertdesk.load_backbone(folder)


def test_unsupported_architecture_fields(tmp_path, hf_tiny):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "gelu_new"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: hidden_act is 'gelu_new'"):
        bertdesk.load_backbone(folder)


def test_safetensors_writer_matches_the_library(tmp_path):
    """bertdesk writes model files from the arrays themselves (no copy of the
    whole file in memory); the library reads back every dtype, shape, value
    and the metadata, and a float32 file is the library's byte for byte."""
    import ml_dtypes
    import torch
    from safetensors import safe_open
    from safetensors.numpy import load, save

    from bertdesk.io.safetensors_writer import write_safetensors

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(5, 3)).astype("float32")
    wide = rng.normal(size=(400, 700)).astype("float32")
    tensors = {"b.weight": matrix.T,  # transposed views: written a block of rows at a time
               "wide": wide.T,  # (700 rows of 1,600 bytes: two blocks)
               "a.bias": rng.normal(size=7).astype("float32"),
               "scalar": np.float32(2.5), "empty": np.zeros((0, 4), "float32"),
               "half": rng.normal(size=(2, 3)).astype("float16"),
               "ids": np.arange(6, dtype="int64").reshape(2, 3),
               "mask": np.array([True, False, True]),
               "big_endian": np.arange(4, dtype=">i4")}
    path = tmp_path / "mine.safetensors"
    with open(path, "wb") as f:
        write_safetensors(f, tensors, metadata={"format": "pt"})
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert header % 8 == 0 and len(raw) == 8 + header + sum(
        np.asarray(v).nbytes for v in tensors.values())
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    read = load(raw)
    assert set(read) == set(tensors)
    for name, value in tensors.items():
        got, value = read[name], np.asarray(value)
        assert got.shape == value.shape and got.dtype == value.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got, value)

    floats = {"b.weight": np.ascontiguousarray(matrix.T), "a.bias": tensors["a.bias"]}
    with open(path, "wb") as f:
        write_safetensors(f, floats, metadata={"format": "pt"})
    assert path.read_bytes() == save(floats, metadata={"format": "pt"})

    bf16 = rng.normal(size=(3, 4)).astype(ml_dtypes.bfloat16)
    with open(path, "wb") as f:
        write_safetensors(f, {"w": bf16})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() is None
        got = f.get_tensor("w")
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.float().numpy(), bf16.astype("float32"))
    with open(path, "wb") as f, pytest.raises(
            ValueError, match="c: dtype complex64 has no safetensors equivalent"):
        write_safetensors(f, {"c": np.zeros(2, "complex64")})


def test_weights_are_written_from_views_of_the_variables():
    """On PyTorch and JAX the arrays a model folder is written from are
    read-only views of the variables (no copy of the model), transposed
    where the file stores (out, in); on TensorFlow, Keras' copies."""
    import keras

    from bertdesk.io.mapping import _np, backbone_tensors

    backbone = bertdesk.BertBackbone(vocabulary_size=30, num_layers=1, hidden_dim=8,
                                     num_heads=2, intermediate_dim=16)
    kernel = backbone.encoder_layers[0].intermediate.kernel
    view = _np(kernel)
    np.testing.assert_array_equal(view, keras.ops.convert_to_numpy(kernel))
    viewed = keras.backend.backend() != "tensorflow"
    assert np.shares_memory(view, _np(kernel)) == viewed
    assert view.flags.writeable == (not viewed)  # nothing writes into the variable
    tensors = backbone_tensors(backbone)
    written = tensors["encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_array_equal(written, keras.ops.convert_to_numpy(kernel).T)
    assert written.dtype == np.float32 and written.shape == (16, 8)


def test_export_never_clobbers_or_leaves_partial_folders(tmp_path, hf_tiny):
    backbone = bertdesk.load_backbone(hf_tiny[1])
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="dst: folder exists"):
        save_pretrained(backbone, dst)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    save_pretrained(backbone, dst, overwrite=True)
    assert (dst / "notes.txt").read_text() == "user data"
    assert (dst / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    # over another model: none of its files a reader would pair with the new ones stay
    (dst / "pytorch_model.bin").write_bytes(b"old weights")
    (dst / "tokenizer.json").write_text("{}")
    (dst / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    save_pretrained(backbone, dst, format="hf", overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors",
                                                     "notes.txt"]
    assert detect_format(dst) == "hf"
    save_pretrained(backbone, dst, tokenizer=bertdesk.load_tokenizer(hf_tiny[1]), overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == [
        "bertdesk.json", "model.safetensors", "notes.txt", "tokenizer_config.json", "vocab.txt"]


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    assert cli_main(["info", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err


# === Pretraining heads, decoder configs, sharded .bin, interrupted overwrites ===
def _hf_masked_lm(folder, tie=True, **config):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    model = BertForMaskedLM(BertConfig(**HF_TINY, tie_word_embeddings=tie,
                                       attn_implementation="eager", **config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    write_vocab(folder)
    return model


def _mlm_logits(model, batch, positions):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor(batch["token_ids"], dtype=torch.long),
                       token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
                       attention_mask=torch.tensor(batch["padding_mask"], dtype=torch.long)
                       ).logits.numpy()
    return np.take_along_axis(logits, positions[..., None], axis=1)


def test_an_untied_masked_lm_decoder_is_refused_not_dropped(tmp_path):
    """transformers' `tie_word_embeddings: false` keeps a decoder of its own;
    bertdesk's head multiplies by the token embedding, so the head's logits
    would be other numbers: refused by name, the backbone still loads."""
    import torch

    model = _hf_masked_lm(tmp_path, tie=False)
    with torch.no_grad():
        model.cls.predictions.decoder.weight.add_(0.5)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="'cls.predictions.decoder.weight' differs from "
                                              "'embeddings.word_embeddings.weight'"):
        BertPretrainingModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not tied to the token embedding"):
        bertdesk.io.convert(tmp_path, tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()
    bertdesk.load_backbone(tmp_path)  # the encoder is the checkpoint's


def test_masked_lm_checkpoints_load_and_export_as_transformers_reads_them(tmp_path):
    """A BertForMaskedLM folder (no NSP head, no pooler): its logits; its
    output bias read from the decoder's copy where only that is stored;
    exported back as BertForMaskedLM without a pooler it never had."""
    from safetensors.torch import load_file, save_file
    from transformers import BertForMaskedLM

    model = _hf_masked_lm(tmp_path / "mlm")
    batch = random_batch(seq=12)
    positions = np.array([[1, 3], [2, 5], [0, 4]], "int32")
    expected = _mlm_logits(model, batch, positions)

    def ours(folder):
        out = BertPretrainingModel.from_pretrained(folder)(
            {**batch, "mask_positions": positions})
        return to_np(out["mlm_logits"])

    np.testing.assert_allclose(ours(tmp_path / "mlm"), expected, atol=1e-5)
    only_copy = copy_folder(tmp_path / "mlm", tmp_path / "decoder_bias")
    tensors = load_file(str(only_copy / "model.safetensors"))
    tensors["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
    save_file(tensors, str(only_copy / "model.safetensors"))
    np.testing.assert_allclose(ours(only_copy), expected, atol=1e-5)

    bertdesk.io.convert(tmp_path / "mlm", tmp_path / "hf", to="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    again, info = BertForMaskedLM.from_pretrained(str(tmp_path / "hf"), output_loading_info=True,
                                                  attn_implementation="eager")
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    np.testing.assert_allclose(_mlm_logits(again.eval(), batch, positions), expected, atol=1e-5)


def test_part_of_a_head_is_refused(tmp_path, hf_tiny):
    from safetensors.torch import load_file, save_file

    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["cls.predictions.transform.dense.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="part of a masked-LM head: .* but lacks "
                                              "'cls.predictions.transform.dense.weight'"):
        BertPretrainingModel.from_pretrained(folder)


@pytest.mark.parametrize("field", ["is_decoder", "add_cross_attention"])
def test_decoder_configs_are_refused(tmp_path, hf_tiny, field):
    folder = copy_folder(hf_tiny[1], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config[field] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"config.json: {field} is True"):
        bertdesk.load_backbone(folder)


def test_sharded_pytorch_bin(tmp_path, hf_tiny):
    import torch

    hf_model, folder, _ = hf_tiny
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(folder / name, sharded)
    state = hf_model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2],
              "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, shard_names in shards.items():
        torch.save({n: state[n] for n in shard_names}, sharded / shard)
    index = sharded / "pytorch_model.bin.index.json"
    weight_map = {n: shard for shard, ns in shards.items() for n in ns}
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert read_checkpoint(sharded).weights_file.name == "pytorch_model.bin.index.json"
    assert_same_as_hf(BertPretrainingModel.from_pretrained(sharded), hf_model)
    (sharded / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="names the shard 'pytorch_model-00002-of-00002"
                                              ".bin', which is not there"):
        read_checkpoint(sharded)
    index.write_text(json.dumps({"weight_map": {"x": "../elsewhere.bin"}}))
    with pytest.raises(CheckpointError, match="is not a file name in the checkpoint's folder"):
        read_checkpoint(sharded)


@pytest.mark.parametrize("fails_at", [1, 2, 3])
def test_an_overwrite_stopped_midway_leaves_no_model_never_a_mix(tmp_path, hf_tiny,
                                                                 monkeypatch, fails_at):
    """Overwriting a model folder file by file: the old descriptor goes
    before any new file arrives, so a stop leaves a folder no reader takes
    for a model, not new weights under the old config."""
    import os
    from pathlib import Path

    import bertdesk.io as bio

    backbone = bertdesk.load_backbone(hf_tiny[1])
    tokenizer = bertdesk.load_tokenizer(hf_tiny[1])
    target = tmp_path / "target"
    save_pretrained(backbone, target, tokenizer, format="hf")
    calls, real = [], os.replace

    def replace(src, dst):  # (the files written inside the staging folder pass)
        if Path(dst).parent == target:
            calls.append(dst)
            if len(calls) == fails_at:
                raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(bio.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(backbone, target, tokenizer, format="hf", overwrite=True)
    assert not (target / "config.json").exists()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        read_checkpoint(target)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_transformers_5_folder_without_vocab_txt(tmp_path, hf_tiny):
    """transformers 5 saves a tokenizer as `tokenizer.json` alone: the
    checkpoint's vocabulary is read from it (and checked against the
    embedding), and a conversion writes it out as vocab.txt."""
    from transformers import BertTokenizerFast

    hf_model, folder, _ = hf_tiny
    hf5 = copy_folder(folder, tmp_path / "hf5")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(str(hf5))
    (hf5 / "vocab.txt").unlink()
    assert read_checkpoint(hf5).vocab_file.name == "tokenizer.json"
    bertdesk.io.convert(hf5, tmp_path / "bd")
    assert (tmp_path / "bd" / "vocab.txt").read_text() == (folder / "vocab.txt").read_text()
    assert_same_as_hf(BertPretrainingModel.from_pretrained(tmp_path / "bd"), hf_model)
