"""The command line never writes over the user's files, and a broken model
folder is reported by the file and the field (no model math here)."""

import hashlib
import json
import re
import shutil
from contextlib import nullcontext

import pytest

from bertdesk.cli import main as cli_main
from bertdesk.io.errors import CheckpointError
from bertdesk.io.run_folder import open_run_folder, removed_if_left_empty, within

pytestmark = pytest.mark.backend_neutral

ROWS = "text,label\ngood film,pos\nbad film,neg\n"


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# Each job's file output, `{out}`, beside its input `{data}`.
OUTPUT_JOBS = [
    ["predict", "--model", "{model}", "--data", "{data}", "--output", "{out}"],
    ["evaluate", "--model", "{model}", "--data", "{data}", "--metrics-out", "{out}"],
    ["finetune", "--model", "{model}", "--train", "{data}", "--output", "{run}",
     "--metrics-out", "{out}"],
]


def _job(argv, tmp_path, data, out):
    names = {"model": str(tmp_path / "no-model"), "data": str(data), "run": str(tmp_path / "run"),
             "out": str(out)}
    return [a.format(**names) for a in argv]


@pytest.mark.parametrize("argv", OUTPUT_JOBS)
def test_an_output_that_is_an_input_file_is_refused_before_any_work(tmp_path, capsys, argv):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    link = tmp_path / "same.csv"  # the same file under another name
    link.symlink_to(data)
    for output in (data, link):
        assert cli_main(_job(argv, tmp_path, data, output)) == 2
        err = capsys.readouterr().err
        assert f"{output}: " in err and "is the --" in err and "replace the data" in err, err
        assert data.read_text() == ROWS
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.parametrize("argv", OUTPUT_JOBS)
def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys, argv):
    """(os.replace failed on it with IsADirectoryError, after all the work)"""
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    folder = tmp_path / "out.csv"
    folder.mkdir()
    assert cli_main(_job(argv, tmp_path, data, folder)) == 2
    err = capsys.readouterr().err
    assert f"{folder}: --" in err and "is a folder; expected the path of a file" in err, err
    assert "Traceback" not in err and folder.is_dir() and not (tmp_path / "run").exists()


def test_metrics_out_inside_the_run_folder_is_refused(tmp_path, capsys):
    """--metrics-out RUN/metrics.json replaced the run's own results (the app
    then showed none), RUN/model/vocab.txt the model's vocabulary."""
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    run = tmp_path / "run"
    for inside in (run / "metrics.json", run / "model" / "vocab.txt", tmp_path / "." / "run" / "x"):
        assert cli_main(["finetune", "--model", "tiny", "--train", str(data), "--output", str(run),
                         "--metrics-out", str(inside)]) == 2
        err = capsys.readouterr().err
        assert f"{inside}: --metrics-out is inside the run folder {run}" in err, err
        assert not run.exists()


def test_an_output_into_the_model_folder_is_refused(tmp_path, capsys, minilm_folder):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(minilm_folder / "config.json", model / "config.json")
    before = digest(model)
    for argv in (["evaluate", "--model", str(model), "--data", str(data),
                  "--metrics-out", str(model / "config.json")],
                 ["predict", "--model", str(model), "--data", str(data),
                  "--output", str(model / "config.json")]):
        assert cli_main(argv) == 2
        assert "is the --model file" in capsys.readouterr().err
    assert digest(model) == before


def test_predictions_path_is_checked_before_the_model_is_loaded(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    assert cli_main(["predict", "--model", str(tmp_path / "no-model"), "--data", str(data),
                     "--output", str(tmp_path / "preds.json")]) == 2
    err = capsys.readouterr().err
    assert "preds.json: output must end in .csv, .tsv, .jsonl" in err, err


def test_resume_without_a_checkpoint_never_writes_over_the_folder(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.json").write_text("MY NOTES")
    (folder / "report").mkdir()
    (folder / "report" / "keep.txt").write_text("keep")
    before = digest(folder)
    assert cli_main(["finetune", "--model", str(tmp_path / "no-model"), "--train", str(data),
                     "--output", str(folder), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume found no checkpoint" in err and "(metrics.json, report)" in err, err
    assert digest(folder) == before


def test_output_that_names_a_file(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    for extra in ([], ["--resume"]):
        assert cli_main(["finetune", "--model", str(tmp_path / "no-model"), "--train", str(data),
                         "--output", str(other)] + extra) == 2
        assert "--output names a file; it must be a folder" in capsys.readouterr().err
    assert other.read_text() == "mine"


def test_vocab_never_writes_over_its_corpus_or_a_model_folder(tmp_path, capsys, minilm_folder):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    before = corpus.read_bytes()
    assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "100",
                     "--output", str(corpus)]) == 2
    assert "--output is the --corpus file" in capsys.readouterr().err
    assert corpus.read_bytes() == before
    # a folder output whose vocab.txt would be a corpus file
    named = tmp_path / "texts"
    named.mkdir()
    (named / "vocab.txt").write_text("a corpus that happens to be called vocab.txt\n")
    assert cli_main(["vocab", "--corpus", str(corpus), str(named / "vocab.txt"),
                     "--vocab-size", "100", "--output", str(named)]) == 2
    assert "is the --corpus file" in capsys.readouterr().err
    # a model's weights belong to its vocab.txt: a new vocabulary there breaks it
    model = tmp_path / "minilm"
    model.mkdir()
    for name in ("config.json", "vocab.txt"):  # what says "a Hugging Face model" (no weights needed)
        shutil.copy(minilm_folder / name, model / name)
    before = digest(model)
    for output in (model, model / "vocab.txt"):  # the folder, or its vocab.txt by name
        assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "100",
                         "--output", str(output)]) == 2
        assert "holds a model" in capsys.readouterr().err
    assert digest(model) == before
    # pretraining data: its token ids belong to its vocab.txt
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.json").write_text("{}")
    (data / "vocab.txt").write_text("[PAD]\n")
    before = digest(data)
    for output in (data, data / "vocab.txt"):
        assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "100",
                         "--output", str(output)]) == 2
        assert "holds pretraining data" in capsys.readouterr().err
    assert digest(data) == before
    # another name in a model folder is not its vocabulary
    assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "100",
                     "--output", str(model / "other-vocab.txt")]) == 0
    # a folder of its own, twice (a new vocabulary over the last one is the point)
    for _ in range(2):
        assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "100",
                         "--output", str(tmp_path / "vocab")]) == 0
    assert (tmp_path / "vocab" / "vocab.txt").is_file()


def test_run_folder_rules(tmp_path):
    fresh = tmp_path / "fresh"
    assert open_run_folder(fresh, resume=False) is False and fresh.is_dir()
    assert open_run_folder(fresh, resume=True) is False  # empty: nothing to lose
    # an attempt stopped before its first checkpoint: its own entries and the
    # leftovers of interrupted atomic writes do not stop a resume
    own = {"data": lambda p: (p / "data.json").is_file()}
    (fresh / "checkpoint").mkdir()
    (fresh / ".metrics.json.x1.tmp").write_text("")
    (fresh / ".model.x2.partial").mkdir()
    (fresh / "data").mkdir()
    with pytest.raises(ValueError, match=r"--resume found no checkpoint .*\(data\)"):
        open_run_folder(fresh, resume=True)
    assert open_run_folder(fresh, resume=True, own=own) is False  # empty ones: nothing to lose
    with pytest.raises(ValueError, match="output folder is not empty"):
        open_run_folder(fresh, resume=False)
    # a run's name is no proof: what is in the entry decides
    (fresh / "data" / "wiki.txt").write_text("the user's corpus")
    with pytest.raises(ValueError, match=r"--resume found no checkpoint .*\(data\), which is "
                                         r"not what a run writes"):
        open_run_folder(fresh, resume=True, own=own)
    (fresh / "data" / "data.json").write_text("{}")
    assert open_run_folder(fresh, resume=True, own=own) is False
    epoch = fresh / "checkpoint" / "epoch-1"  # renamed in, state.json not yet written
    epoch.mkdir()
    (epoch / "config.json").write_text("{}")
    (epoch / "model.weights.h5").write_bytes(b"")
    (fresh / "checkpoint" / ".epoch-2.x3.partial").mkdir()
    assert open_run_folder(fresh, resume=True, own=own) is False
    (fresh / "checkpoint" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"\(checkpoint\)"):
        open_run_folder(fresh, resume=True, own=own)
    (fresh / "checkpoint" / "state.json").write_text("{}")
    assert open_run_folder(fresh, resume=True) is True


def test_a_failed_run_removes_only_the_empty_folders_it_made(tmp_path):
    out = tmp_path / "new" / "runs" / "run"
    with pytest.raises(ValueError, match="refused"), removed_if_left_empty(out):
        out.mkdir(parents=True)
        raise ValueError("refused")
    assert tmp_path.is_dir() and not (tmp_path / "new").exists()
    (tmp_path / "new" / "runs").mkdir(parents=True)  # the user's: kept
    with pytest.raises(KeyboardInterrupt), removed_if_left_empty(out):
        out.mkdir()
        raise KeyboardInterrupt  # a cancel
    assert (tmp_path / "new" / "runs").is_dir() and not out.exists()
    with pytest.raises(ValueError), removed_if_left_empty(out):
        (out / "checkpoint").mkdir(parents=True)  # written: the run's work is kept
        raise ValueError
    assert (out / "checkpoint").is_dir()
    (out / "checkpoint").rmdir()
    with pytest.raises(ValueError), removed_if_left_empty(out):  # existed before: kept
        raise ValueError
    assert out.is_dir()
    with removed_if_left_empty(tmp_path / "done"):  # a run that succeeds keeps its folder
        (tmp_path / "done").mkdir()
    assert (tmp_path / "done").is_dir()


def test_an_interrupted_job_says_so_in_a_line(monkeypatch, capsys, tmp_path):
    """Ctrl-C in a pretraining run printed a 33-frame traceback."""
    from bertdesk import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_pretrain", interrupted)
    out = tmp_path / "run"
    assert cli_main(["pretrain", "--corpus", "x.txt", "--output", str(out)]) == 130
    assert capsys.readouterr().err == "bertdesk pretrain: interrupted\n"  # nothing to resume
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.json").write_text("{}")
    assert cli_main(["pretrain", "--corpus", "x.txt", "--output", str(out)]) == 130
    err = capsys.readouterr().err
    assert err == (f"bertdesk pretrain: interrupted; --resume continues the run in {out} from "
                   "its last checkpoint\n")


def test_metrics_out_is_strict_json():
    """An undefined metric (Pearson's r of constant predictions) was written
    as a bare NaN, which jq and JavaScript refuse."""
    from bertdesk.cli import _public_metrics

    metrics = {"pearson": float("nan"), "accuracy": 0.5, "confusion_matrix": [[1]],
               "per_class": {"a": {"f1": float("inf"), "support": 3}}, "sizes": [float("nan")]}
    text = json.dumps(_public_metrics(metrics), allow_nan=False)
    assert json.loads(text) == {"pearson": None, "accuracy": 0.5, "sizes": [None],
                                "per_class": {"a": {"f1": None, "support": 3}}}


def test_within_compares_paths_however_spelt(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for inside in (run, run / "metrics.json", tmp_path / "." / "run" / "model" / "x",
                   "run/../run/a", tmp_path / "link" / "metrics.json", "link"):
        assert within(inside, run) and within(inside, "run"), inside
    for outside in (tmp_path, tmp_path / "run2", tmp_path / "runs" / "run", "run/../x"):
        assert not within(outside, run), outside


def test_resume_never_takes_a_users_folder_named_as_a_runs(tmp_path, capsys, minilm_folder):
    # the user's corpus in proj/data: pretraining into proj with --resume once
    # deleted it, a data/ without data.json counting as an unfinished attempt
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    corpus = proj / "data" / "wiki.txt"
    corpus.write_text("Alice walks home. Bob talks.\n\nCarol sings. Dan reads.\n" * 20)
    before = digest(proj)
    assert cli_main(["pretrain", "--corpus", str(corpus), "--output", str(proj), "--resume",
                     "--preset", "tiny", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--resume found no checkpoint" in err and "(data)" in err, err
    assert digest(proj) == before
    # the user's model in proj/model, fine-tuned into proj: the run's best
    # model would have replaced it at the first epoch
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    shutil.rmtree(proj)
    (proj / "model").mkdir(parents=True)
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        shutil.copy(minilm_folder / name, proj / "model" / name)
    before = digest(proj)
    argv = ["finetune", "--model", str(proj / "model"), "--train", str(data),
            "--output", str(proj), "--resume"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume found no checkpoint" in err and "(model)" in err, err
    # a bertdesk model folder written by a run into another folder: not this run's
    (proj / "model" / "config.json").unlink()
    (proj / "model" / "bertdesk.json").write_text(json.dumps(
        {"format": "bertdesk", "training_args": {"output": str(tmp_path / "elsewhere")}}))
    before = digest(proj)
    assert cli_main(argv) == 2
    assert "(model)" in capsys.readouterr().err
    assert digest(proj) == before
    # the run's own model/ (its bertdesk.json names this output), but the model
    # to fine-tune: the run would write over what it reads
    (proj / "model" / "bertdesk.json").write_text(json.dumps(
        {"format": "bertdesk", "training_args": {"output": str(proj)}}))
    before = digest(proj)
    assert cli_main(argv) == 2
    assert "the model to fine-tune is inside --output" in capsys.readouterr().err
    assert digest(proj) == before


def test_fine_tuning_resumes_a_run_stopped_in_its_first_checkpoint(tmp_path):
    # an epoch writes model/ (its best so far) and then the checkpoint: a run
    # stopped in between has no state.json, and --resume starts it over
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "checkpoint").mkdir()
    config = FinetuneConfig(train=str(data), validation=str(data), output=str(out),
                            model=str(tmp_path / "no-model"), resume=True)
    with pytest.raises(Exception) as e:  # past the folder check: the missing model stops it
        run_finetune(config)
    assert "no-model" in str(e.value) and "--resume found no checkpoint" not in str(e.value)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--resume found no checkpoint .*\(notes.txt\)"):
        run_finetune(config)


# === Broken model folders ===
@pytest.fixture
def model_folder(tmp_path, minilm_folder):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_folder / name, folder / name)
    return folder


def test_bad_vocabulary_and_tokenizer_config_are_checkpoint_errors(model_folder):
    # CheckpointError is what the command line reports as a message, not a traceback
    from bertdesk.io import load_tokenizer

    vocab = model_folder / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").split("\n")
    vocab.write_text("\n".join(lines[:199] + ["[PAD]"] + lines[200:]), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab.txt: line 200: token '\[PAD\]' already on "
                                              r"line 1"):
        load_tokenizer(model_folder)
    vocab.write_text("\n".join(lines), encoding="utf-8")
    (model_folder / "tokenizer_config.json").write_text('{"do_lower_case": tr')
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: not valid JSON"):
        load_tokenizer(model_folder)


@pytest.mark.parametrize("task, head, missing", [
    ("classify", {}, "'problem_type', 'num_classes', 'labels'"),
    ("classify", {"problem_type": "single_label", "num_classes": 2}, "'labels'"),
    ("ner", {"labels": ["O"]}, "'num_classes'"),
    ("qa", {"doc_stride": 128}, "'max_answer_length'"),
])
def test_a_model_folder_whose_head_lacks_a_field(model_folder, capsys, task, head, missing):
    (model_folder / "bertdesk.json").write_text(json.dumps({"task": task, "head": head}))
    data = model_folder.parent / "data.csv"
    data.write_text(ROWS)
    assert cli_main(["predict", "--model", str(model_folder), "--data", str(data),
                     "--output", str(model_folder.parent / "preds.csv")]) == 2
    err = capsys.readouterr().err
    assert f"bertdesk.json: the 'head' entry lacks {missing}" in err, err


@pytest.mark.parametrize("file, content, message", [
    ("bertdesk.json", {"format": "bertdesk", "backbone": {}},
     r"bertdesk.json: backbone: missing config fields \['vocabulary_size', 'num_layers', "
     r"'hidden_dim', 'num_heads', 'intermediate_dim'\]"),
    ("bertdesk.json", {"format": "bertdesk", "backbone": {
        "vocabulary_size": 100, "num_layers": 2, "hidden_dim": 16, "num_heads": 2,
        "intermediate_dim": "32"}},
     r"bertdesk.json: backbone: intermediate_dim must be a whole number >= 1, got '32'"),
    ("bertdesk.json", ["not", "an", "object"], r"bertdesk.json: expected a JSON object, got list"),
    ("config.json", {"vocab_size": 100, "num_hidden_layers": 2, "hidden_size": 16,
                     "num_attention_heads": 0, "intermediate_size": 32},
     r"config.json: num_attention_heads must be a whole number >= 1, got 0"),
    ("config.json", {"vocab_size": 100, "num_hidden_layers": 2, "hidden_size": "16",
                     "num_attention_heads": 2, "intermediate_size": 32},
     r"config.json: hidden_size must be a whole number >= 1, got '16'"),
    ("config.json", {"vocab_size": 100, "num_hidden_layers": 2, "hidden_size": 16,
                     "num_attention_heads": 2, "intermediate_size": 32,
                     "hidden_dropout_prob": "0.1"},
     r"config.json: hidden_dropout_prob must be a number >= 0, got '0.1'"),
    ("config.json", {"vocab_size": 100, "num_hidden_layers": 2, "hidden_size": 16,
                     "num_attention_heads": 3, "intermediate_size": 32},
     r"config.json: hidden_size 16 is not divisible by num_attention_heads 3"),
])
def test_a_config_with_bad_fields_is_reported_by_file_and_field(model_folder, capsys, file,
                                                                 content, message):
    (model_folder / "model.safetensors").write_bytes(b"")  # never read: the config fails first
    (model_folder / file).write_text(json.dumps(content))
    assert cli_main(["info", str(model_folder)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_files_with_a_byte_order_mark_read_as_without(model_folder, minilm_folder):
    from bertdesk.io import load_tokenizer
    from bertdesk.io.formats import read_json

    plain = load_tokenizer(model_folder)
    vocab = model_folder / "vocab.txt"
    vocab.write_bytes(b"\xef\xbb\xbf" + vocab.read_bytes())  # as some editors save it
    marked = load_tokenizer(model_folder)
    assert marked.vocabulary == plain.vocabulary and marked.vocabulary[0] == "[PAD]"
    config = model_folder / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + (minilm_folder / "config.json").read_bytes())
    assert read_json(config) == json.loads((minilm_folder / "config.json").read_text())


@pytest.mark.parametrize("extra, message", [
    (["--max-steps", "0"], "--max-steps: expected a whole number >= 1, got 0"),
    (["--seq-length", "4"], "--seq-length: expected a whole number >= 8, got 4"),
    (["--document-pattern", "["], r"--document-pattern '\[': not a regular expression"),
    # each of these was a traceback, or accepted
    (["--vocab-size", "3"], "--vocab-size: expected a whole number >= 6, got 3"),
    (["--preset", "Tiny"], "--preset 'Tiny': expected one of base, large, medium, mini, small, "
                           "tiny"),
    (["--model-parallel", "0"], "--model-parallel: expected a whole number >= 1, got 0"),
    (["--short-seq-prob", "5"], r"--short-seq-prob: expected a number in \[0, 1\], got 5.0"),
    (["--warmup-steps", "-5"], "--warmup-steps: expected a whole number >= 0, got -5"),
    (["--workers", "-3"], "--workers: expected a whole number >= 1, got -3"),
    (["--learning-rate", "nan"], r"--learning-rate: expected a number in \(0, inf\), got nan"),
    # ignored beside prepared data, and recorded as if used
    (["--data", "prepared", "--vocab", "v.txt"], "--vocab: the prepared data prepared holds its "
                                                 "own vocabulary and casing"),
    (["--data", "prepared", "--cased"], "--cased: the prepared data prepared holds its own"),
])
def test_bad_pretraining_arguments_are_messages(tmp_path, capsys, extra, message):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("Alice walks home. Bob talks.\n\nCarol sings. Dan reads.\n" * 20)
    assert cli_main(["pretrain", "--corpus", str(corpus), "--output", str(tmp_path / "run"),
                     "--preset", "tiny"] + extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.parametrize("command, message", [
    (["vocab", "--vocab-size", "3"], "argument --vocab-size: expected a whole number >= 6"),
    (["vocab", "--min-frequency", "-1"], "argument --min-frequency: expected a whole number >= 0"),
    (["pretraining-data", "--vocab", "VOCAB", "--workers", "-3"],
     "argument --workers: expected a positive whole number"),
    (["pretraining-data", "--vocab", "VOCAB", "--short-seq-prob", "-1"],
     r"--short-seq-prob: expected a number in \[0, 1\], got -1.0"),
    (["pretraining-data", "--vocab", "VOCAB", "--masked-lm-prob", "1"],
     r"--masked-lm-prob: expected a number in \(0, 1\), got 1.0"),
])
def test_bad_vocabulary_and_data_arguments_are_messages(tmp_path, capsys, command, message):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("Alice walks home. Bob talks.\n\nCarol sings. Dan reads.\n" * 20)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    command = [str(vocab) if c == "VOCAB" else c for c in command]
    with pytest.raises(SystemExit) if "argument" in message else nullcontext():
        assert cli_main(command + ["--corpus", str(corpus), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs: expected a whole number >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: expected a whole number >= 1, got 0"),
    (["--validation-fraction", "0"], r"--validation-fraction: expected a number in \(0, 1\), "
                                     "got 0.0"),
    (["--validation-fraction", "1"], r"--validation-fraction: expected a number in \(0, 1\)"),
    (["--warmup-ratio", "2"], r"--warmup-ratio: expected a number in \[0, 1\], got 2.0"),
    (["--learning-rate=-1e-5"], r"--learning-rate: expected a number in \(0, inf\)"),
    (["--early-stopping-patience", "-1"], "--early-stopping-patience: expected a whole number"),
    # a QA window of 4 leaves no room for a question and a context (a traceback)
    (["--task", "qa", "--max-length", "4"], "--max-length: expected a whole number >= 5, got 4"),
])
def test_bad_finetuning_arguments_are_messages(tmp_path, capsys, extra, message):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    assert cli_main(["finetune", "--model", "tiny", "--train", str(data),
                     "--output", str(tmp_path / "run")] + extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_damaged_checkpoint_state_is_a_message(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    for damaged in ('{"epoch": 1, "check', "[1, 2]", "\xff"):
        (out / "checkpoint" / "state.json").write_text(damaged, encoding="latin-1")
        assert cli_main(["finetune", "--model", "tiny", "--train", str(data),
                         "--validation", str(data), "--output", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "state.json: not the checkpoint state a run writes" in err, err


def test_a_split_that_holds_out_nothing_is_a_message(tmp_path, capsys):
    """Two rows, one a label: the stratified split holds out none, and the
    run scored nothing (accuracy 0.0, a "best" model, an empty predictions
    file)."""
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    assert cli_main(["finetune", "--model", "tiny", "--train", str(data),
                     "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert (f"{data}: --validation-fraction 0.1 of 2 examples holds out none (every label "
            "needs its examples in training); give a --validation file") in err, err
    assert not (tmp_path / "run").exists()  # (made for the run, then removed, empty)


def test_a_run_refused_for_its_data_leaves_no_folder(tmp_path, capsys):
    """Fine-tuning and pretraining runs refused for their data, which they
    read once the run folder is made, left it behind empty (and the parents
    made for it)."""
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    out = tmp_path / "new" / "run"
    finetune = ["finetune", "--model", "tiny", "--train", str(data), "--output", str(out),
                "--text-column", "body"]
    assert cli_main(finetune) == 2
    assert "body" in capsys.readouterr().err and not (tmp_path / "new").exists()
    out.mkdir(parents=True)  # the user's own empty folder stays
    assert cli_main(finetune) == 2 and out.is_dir()
    out.rmdir()
    out.parent.rmdir()
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n\n")
    assert cli_main(["pretrain", "--corpus", str(corpus), "--output", str(out),
                     "--preset", "tiny", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert str(corpus) in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_inputs_past_the_models_tables_are_refused_before_training(tmp_path, capsys,
                                                                   minilm_folder):
    # past the learned positions PyTorch fails mid-run and JAX reads NaN rows
    import bertdesk

    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    argv = ["finetune", "--model", "tiny", "--train", str(data), "--validation", str(data)]
    for length in ("1024", "2"):
        assert cli_main(argv + ["--output", str(tmp_path / f"run{length}"),
                                "--max-length", length]) == 2
        err = capsys.readouterr().err
        assert f"--max-length {length}: the model tiny has 512 positions; expected a whole " \
               f"number from 3" in err, err
    # one segment embedding (type_vocab_size 1) and text pairs
    folder = tmp_path / "one-segment"
    backbone = bertdesk.BertBackbone(vocabulary_size=30522, num_layers=1, hidden_dim=8,
                                     num_heads=2, intermediate_dim=16, max_sequence_length=64,
                                     type_vocabulary_size=1)
    bertdesk.save_pretrained(backbone, folder, bertdesk.load_tokenizer(minilm_folder))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text,pair,label\na,b,x\nc,d,y\n")
    assert cli_main(["finetune", "--model", str(folder), "--train", str(pairs),
                     "--validation", str(pairs), "--text-pair-column", "pair",
                     "--max-length", "32", "--output", str(tmp_path / "run-pairs")]) == 2
    err = capsys.readouterr().err
    assert "one segment embedding (type_vocab_size 1), and text pairs need two" in err, err
    assert not (tmp_path / "run-pairs" / "model").exists()


def test_a_file_that_cannot_be_made_is_named_as_asked(monkeypatch, tmp_path):
    """A file the system refuses to make is named as given, not by the
    temporary file beside it (`/proc/.nope.json.x1y2.tmp`)."""
    from bertdesk.io.atomic import atomic_write_text

    for target in ("/proc/nope.json", str(tmp_path / "out.json")):
        if target.startswith(str(tmp_path)):  # a folder that refuses new files (root or not)
            import tempfile

            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied", str(tmp_path / ".out.json.x.tmp"))
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(OSError) as e:
            atomic_write_text(target, "{}")
        assert e.value.filename == target and ".tmp" not in str(e.value)
    assert isinstance(e.value, PermissionError)
