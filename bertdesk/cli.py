"""The `bertdesk` command line.

    bertdesk demo                              # the README's main job
    bertdesk convert SRC DST --to hf|bertdesk  # checkpoint conversion
    bertdesk info FOLDER                       # what a checkpoint holds

`--backend` picks the Keras backend; it must be set before Keras is imported,
so this module imports nothing heavy at the top.
"""

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def _set_backend(backend):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
            raise SystemExit(f"error: Keras is already imported with another backend than {backend}")
        os.environ["KERAS_BACKEND"] = backend


def _cmd_convert(args):
    from bertdesk.io import convert

    out = convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} checkpoint to {out}")


def _cmd_info(args):
    from bertdesk.io import read_checkpoint

    ckpt = read_checkpoint(args.folder)
    from bertdesk.io.mapping import IGNORED

    n = sum(int(v.size) for k, v in ckpt.tensors.items()
            if not k.startswith("cls.") and k not in IGNORED)
    c = ckpt.config
    print(f"folder:  {ckpt.folder}\nformat:  {ckpt.format}\nweights: {ckpt.weights_file.name}")
    print(f"shape:   L{c['num_layers']}/H{c['hidden_dim']}/A{c['num_heads']}/"
          f"FFN{c['intermediate_dim']}, vocab {c['vocabulary_size']}, "
          f"{c.get('max_sequence_length', 512)} positions")
    print(f"params:  {n:,} in the backbone")
    heads = sorted({k.split(".")[1] for k in ckpt.tensors if k.startswith("cls.")})
    print(f"heads:   {', '.join(heads) or 'none'}; task heads: "
          f"{', '.join(ckpt.metadata.get('task_heads', [])) or 'none'}")
    print(f"vocab:   {ckpt.vocab_file or 'none'}")


def _cmd_demo(args):
    import numpy as np

    import bertdesk

    folder = args.model or bertdesk.bundled_checkpoint()
    tokenizer = bertdesk.load_tokenizer(folder)
    backbone = bertdesk.load_backbone(folder)
    sentences = [
        "A man is playing a guitar.",
        "Someone plays an instrument on stage.",
        "The stock market fell sharply today.",
        "Shares dropped as investors panicked.",
        "A cat sleeps on the sofa.",
    ]
    import keras

    batch = tokenizer(sentences, max_length=32, padding="longest")
    out = backbone.predict(batch, verbose=0)
    seq = np.asarray(out["sequence_output"], dtype=np.float32)
    mask = batch["padding_mask"][..., None].astype(np.float32)
    emb = (seq * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    print(f"backend {keras.backend.backend()}, model {folder}")
    for i, s in enumerate(sentences):
        best = max((j for j in range(len(sentences)) if j != i), key=lambda j: sim[i, j])
        print(f"{s:<40} closest: {sentences[best]!r} (cosine {sim[i, best]:.3f})")


def build_parser():
    parser = argparse.ArgumentParser(prog="bertdesk", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: $KERAS_BACKEND)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="encode sentences with the bundled pretrained BERT")
    p.add_argument("--model", help="checkpoint folder (default: the bundled MiniLM)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("convert", help="convert a checkpoint folder")
    p.add_argument("src", help="Hugging Face, Google TF, keras-hub or bertdesk folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=("hf", "bertdesk"), default="bertdesk")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing folder")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="describe a checkpoint folder")
    p.add_argument("folder")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    _set_backend(args.backend)
    from bertdesk.io.errors import CheckpointError

    try:
        args.func(args)
    except (CheckpointError, FileNotFoundError, FileExistsError) as e:
        print(f"bertdesk {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
