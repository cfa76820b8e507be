"""Sentence-pair instances and masked-LM predictions, as google-research/bert's
`create_pretraining_data.py` makes them.

The algorithm and its use of the random generator follow the reference call
for call (`random.Random`: same draws in the same order), on token ids
instead of token strings:

- `create_instances_from_document`: fill a chunk of sentences up to a target
  length (`short_seq_prob` of the documents get a random shorter target), cut
  it at a random sentence into A and B; half the time (always when the chunk
  holds one sentence) B comes from a random other document and the unused
  sentences are put back; the pair is trimmed from a random end of the
  longer side.
- `mask_tokens`: `masked_lm_prob` of the tokens (at least one, at most
  `max_predictions_per_seq`), never [CLS] or [SEP]; each chosen token becomes
  [MASK] 80% of the time, a random token 10%, stays itself 10%. With whole
  word masking, a word's pieces (a token and the continuations after it) are
  chosen or skipped together.

Two deliberate differences. The random replacement is drawn from the
vocabulary without its special tokens ([PAD], [CLS], [SEP], [MASK], [UNK],
[unusedN]); the reference draws from the whole vocabulary, so 10% of a
random 10% of predictions could put a [PAD] or [CLS] inside a sentence.
And with whole-word masking, a `##` piece that truncation left at the
start of a segment is a word of its own, where the reference appends it to
the last word before the [SEP] (masking pieces of two different words as
one).
"""

def replacement_ids(vocabulary):
    """Ids a masked token may be replaced by: every word piece except the
    bracketed special tokens."""
    return [i for i, t in enumerate(vocabulary)
            if not (t.startswith("[") and t.endswith("]") and len(t) > 2)]


class Segment:
    """Token ids with a parallel flag list: `cont[i]` is true when token `i`
    continues the word of token `i - 1` (whole-word masking)."""

    __slots__ = ("ids", "cont")

    def __init__(self, ids=None, cont=None):
        self.ids = list(ids or [])
        self.cont = list(cont or [])

    def __len__(self):
        return len(self.ids)

    def extend(self, other):
        self.ids.extend(other.ids)
        self.cont.extend(other.cont)


def truncate_seq_pair(a, b, max_num_tokens, rng):
    """Trim the longer of `a`, `b` from a random end until they fit."""
    while len(a) + len(b) > max_num_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc.ids[0]
            del trunc.cont[0]
        else:
            trunc.ids.pop()
            trunc.cont.pop()


def create_instances_from_document(all_documents, document_index, max_seq_length,
                                   short_seq_prob, rng, others=None):
    """Sentence pairs from one document, yielded one at a time as
    `(a, b, is_random_next)` with `a`, `b` `Segment`s that fit
    `max_seq_length` with [CLS] and two [SEP]. `all_documents` is a list of
    documents, each a list of `Segment`s (sentences). A caller that masks
    each pair (`mask_tokens`, the same `rng`) before taking the next draws
    in the reference's order, which masks inside this loop. `others`:
    documents from elsewhere in the corpus, where a random B is drawn
    instead (for a shard of one document, whose B would be its own)."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    current_chunk, current_length = [], 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                a = Segment()
                for j in range(a_end):
                    a.extend(current_chunk[j])
                b = Segment()
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(a)
                    if others:
                        random_document = others[rng.randint(0, len(others) - 1)]
                    else:
                        for _ in range(10):
                            random_document_index = rng.randint(0, len(all_documents) - 1)
                            if random_document_index != document_index:
                                break
                        random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        b.extend(random_document[j])
                        if len(b) >= target_b_length:
                            break
                    # the sentences not used go back for the next pair
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        b.extend(current_chunk[j])
                truncate_seq_pair(a, b, max_num_tokens, rng)
                if len(a) >= 1 and len(b) >= 1:
                    yield a, b, is_random_next
            current_chunk, current_length = [], 0
        i += 1


def pack_pair(a, b, cls_id, sep_id):
    """`[CLS] a [SEP] b [SEP]` as (ids, cont, length of `[CLS] a [SEP]`)."""
    ids = [cls_id, *a.ids, sep_id, *b.ids, sep_id]
    cont = [False, *a.cont, False, *b.cont, False]
    return ids, cont, len(a) + 2


def mask_tokens(ids, cont, masked_lm_prob, max_predictions_per_seq, whole_word_mask,
                replacement, mask_id, special_ids, rng):
    """Masked-LM predictions for one packed sequence.

    Returns `(masked_ids, positions, labels)`: the input with chosen tokens
    replaced, and the chosen positions (ascending) with their original ids.
    `special_ids` are never chosen; `replacement` lists the ids a random
    replacement is drawn from.
    """
    cand_indexes = []
    after_special = True
    for i, token in enumerate(ids):
        if token in special_ids:
            after_special = True
            continue
        # a piece left at the start of a segment by truncation starts its own
        # word (the reference would glue it to the last word before [SEP])
        if whole_word_mask and cand_indexes and cont[i] and not after_special:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
        after_special = False
    rng.shuffle(cand_indexes)

    output = list(ids)
    num_to_predict = min(max_predictions_per_seq,
                         max(1, int(round(len(ids) * masked_lm_prob))))
    masked, covered = [], set()
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(index in covered for index in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                token = mask_id
            elif rng.random() < 0.5:
                token = ids[index]
            else:
                token = replacement[rng.randint(0, len(replacement) - 1)]
            output[index] = token
            masked.append((index, ids[index]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]
