"""Batches streamed from a folder that `create_pretraining_data` wrote.

Batch `b` is a pure function of (folder, seed, batch size, b): the stream
visits every instance once per epoch, shards in an order shuffled per epoch,
`cycle` shards at a time with their instances shuffled together, so a
resumed run asks for batch `b` and gets exactly what the killed run would
have seen, without replaying the ones before it. Shards are memory-mapped
and at most `cycle` + 1 are open at once, so the corpus may be far larger than
memory. With dynamic masking, each instance is masked when it is read, with
a generator seeded by (seed, epoch, shard, instance): a new mask every
epoch, the same mask on every re-run.
"""

import json
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bertdesk.data.tables import DataError
from bertdesk.pretraining.data_writer import FORMAT
from bertdesk.pretraining.instances import mask_tokens, replacement_ids


class PretrainingData:
    """Args:
        folder: output of `create_pretraining_data`.
        batch_size: instances per batch.
        seed: shuffling (and dynamic masking) seed.
        vocabulary: word pieces (for dynamic masking's random replacement);
            read from the folder's vocab.txt when omitted.
        cycle: shards read (and mixed) at a time.
    """

    def __init__(self, folder, batch_size, seed=0, vocabulary=None, cycle=8):
        self.folder = Path(folder)
        path = self.folder / "data.json"
        if not path.is_file():
            raise DataError(f"{self.folder}: no data.json; not a folder written by "
                            "`bertdesk pretraining-data` (or it did not finish)")
        manifest = read_manifest(path)
        self.manifest = manifest
        self.options = manifest["options"]
        self.shards = [s for s in manifest["shards"] if s["instances"] > 0]
        self.sizes = np.array([s["instances"] for s in self.shards], np.int64)
        self.num_instances = int(self.sizes.sum())
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.cycle = max(1, int(cycle))
        self.seq_length = self.options["max_seq_length"]
        self.max_predictions = self.options["max_predictions_per_seq"]
        self.dynamic = self.options["masking"] == "dynamic"
        if self.dynamic:
            from bertdesk.tokenizer import read_vocab

            vocabulary = vocabulary or read_vocab(self.folder / "vocab.txt")
            index = {t: i for i, t in enumerate(vocabulary)}
            self.mask_id = index["[MASK]"]
            self.special = {index["[CLS]"], index["[SEP]"], index["[PAD]"]}
            self.replacement = replacement_ids(vocabulary)
        self._arrays = OrderedDict()  # shard -> dict of memory-mapped arrays
        self._orders = OrderedDict()  # (epoch, group) -> permutation

    @property
    def batches_per_epoch(self):
        return -(-self.num_instances // self.batch_size)

    # === Positions ===
    # An epoch visits the shards in a shuffled order, `cycle` shards at a time;
    # the instances of those shards are shuffled together (as tf.data's
    # interleave + shuffle does), so a batch mixes documents from several
    # shards instead of draining one shard (one source) after another.
    def _groups(self, epoch):
        """(shard groups, cumulative instance counts of the groups)."""
        key = (epoch, "groups")
        if key not in self._orders:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
            groups = [order[i:i + self.cycle] for i in range(0, len(order), self.cycle)]
            ends = np.cumsum([int(self.sizes[g].sum()) for g in groups])
            self._cache(self._orders, key, (groups, ends), 4)
        return self._orders[key]

    def _group_order(self, epoch, g, shards):
        key = (epoch, g)
        if key not in self._orders:
            count = int(self.sizes[shards].sum())
            perm = np.random.default_rng([self.seed, epoch, g]).permutation(count)
            self._cache(self._orders, key, (perm, np.cumsum(self.sizes[shards])), 4)
        return self._orders[key]

    @staticmethod
    def _cache(store, key, value, size):
        store[key] = value
        while len(store) > size:
            store.popitem(last=False)

    def locate(self, position):
        """(epoch, shard, row) of stream position `position`."""
        epoch, k = divmod(int(position), self.num_instances)
        groups, ends = self._groups(epoch)
        g = int(np.searchsorted(ends, k, side="right"))
        shards = groups[g]
        perm, shard_ends = self._group_order(epoch, g, shards)
        j = int(perm[k - (int(ends[g - 1]) if g else 0)])
        i = int(np.searchsorted(shard_ends, j, side="right"))
        return epoch, int(shards[i]), j - (int(shard_ends[i - 1]) if i else 0)

    def _shard(self, shard):
        if shard not in self._arrays:
            folder = self.folder / self.shards[shard]["name"]
            if not folder.is_dir():
                raise DataError(f"{folder}: shard listed in data.json is missing")
            arrays = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
            self._cache(self._arrays, shard, arrays, self.cycle + 1)
        return self._arrays[shard]

    # === Batches ===
    def batch(self, b, part=(0, 1)):
        """Batch `b` (any non-negative integer; the stream wraps around
        epochs) as `(inputs, targets)` dicts of numpy arrays; with
        `part=(i, k)`, only the i-th of k equal slices of its rows (what
        process i of k feeds in a multi-process run)."""
        index, parts = part
        if self.batch_size % parts:
            raise ValueError(f"batch size {self.batch_size} does not split into {parts} parts")
        n, length, p = self.batch_size // parts, self.seq_length, self.max_predictions
        first = b * self.batch_size + index * n
        token_ids = np.zeros((n, length), np.int32)
        segment_ids = np.zeros((n, length), np.int32)
        padding_mask = np.zeros((n, length), np.int32)
        positions = np.zeros((n, p), np.int32)
        labels = np.full((n, p), -1, np.int32)
        nsp = np.zeros(n, np.int32)
        for r in range(n):
            epoch, shard, row = self.locate(first + r)
            a = self._shard(shard)
            k, a_len = int(a["lengths"][row]), int(a["a_lengths"][row])
            ids = a["token_ids"][row, :k].astype(np.int32)
            if self.dynamic:
                cont = (a["continuation"][row, :k] if "continuation" in a
                        else np.zeros(k, bool))
                rng = random.Random(f"{self.seed}/{epoch}/{shard}/{row}")
                masked, pos, lab = mask_tokens(
                    ids.tolist(), cont.tolist(), self.options["masked_lm_prob"], p,
                    self.options["whole_word_mask"], self.replacement, self.mask_id,
                    self.special, rng)
                ids = np.asarray(masked, np.int32)
                positions[r, :len(pos)] = pos
                labels[r, :len(lab)] = lab
            else:
                positions[r] = a["mask_positions"][row]
                labels[r] = a["mask_labels"][row]
            token_ids[r, :k] = ids
            segment_ids[r, a_len:k] = 1
            padding_mask[r, :k] = 1
            nsp[r] = a["next_sentence"][row]
        inputs = {"token_ids": token_ids, "segment_ids": segment_ids,
                  "padding_mask": padding_mask, "mask_positions": positions}
        return inputs, {"mlm_logits": labels, "nsp_logits": nsp}


def read_manifest(path):
    """The `data.json` at `path` as a dict, checked: the format, and the
    folder's `vocab.txt` the one the token ids were written with (its
    sha256); DataError naming the file otherwise."""
    import hashlib

    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e}); the data folder is damaged, make "
                        "it again with `bertdesk pretraining-data`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r}")
    expected = manifest.get("vocab_sha256")
    vocab = path.parent / "vocab.txt"
    if expected is not None:
        if not vocab.is_file():
            raise DataError(f"{vocab}: missing; the data's token ids need the vocabulary they "
                            "were written with")
        if hashlib.sha256(vocab.read_bytes()).hexdigest() != expected:
            raise DataError(f"{vocab}: not the vocabulary the data was written with (its sha256 "
                            f"differs from {path.name}'s vocab_sha256), so its token ids would "
                            "read as other words; put the original vocab.txt back, or make the "
                            "data again")
    return manifest
