"""Writing a safetensors file straight from numpy arrays, without a copy of
the whole file in memory.

`safetensors.numpy.save` (and `save_file`) first turns every tensor into
bytes: the whole file, once more, beside the model's own weights, at every
model folder a run writes (the best epoch's, a pretraining export).
The format is a little-endian u64 header size, a JSON header (dtype, shape
and byte offsets of each tensor, optional string metadata), then the
tensors' raw bytes back to back; here the header is written, then each
array's buffer as it is, or, for a strided view (a transposed kernel), its
rows a block at a time. The files are what the library writes (the tests
read them with `safetensors.safe_open` and transformers).
"""

import json
import struct

import numpy as np

from bertdesk.io.atomic import atomic_write

# numpy dtype name -> safetensors dtype (ml_dtypes' bfloat16 is "bfloat16")
DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
          "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
          "bool": "BOOL"}


def save_safetensors(path, tensors):
    """Write `tensors` to `path` atomically, with the `{"format": "pt"}`
    metadata transformers expects of a PyTorch model's file."""
    atomic_write(path, lambda f: write_safetensors(f, tensors, metadata={"format": "pt"}))


def write_safetensors(file, tensors, metadata=None):
    """Write `tensors` ({name: array}) to `file` (binary, open for writing)
    as a safetensors file, with `metadata` ({str: str}) in its header."""
    arrays = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype.name not in DTYPES:
            raise ValueError(f"{name}: dtype {array.dtype} has no safetensors equivalent")
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        arrays[name] = array
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, array in arrays.items():
        header[name] = {"dtype": DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned, as the library's
    file.write(struct.pack("<Q", len(text)))
    file.write(text)
    for array in arrays.values():
        for block in _row_blocks(array):
            file.write(block.reshape(-1).view(np.uint8))


def _row_blocks(array, block_bytes=1 << 20):
    """`array`'s bytes in C order: the array itself when contiguous, else
    about `block_bytes` of its leading rows at a time (a transposed kernel
    is never copied whole)."""
    if array.nbytes == 0:
        return
    if array.flags.c_contiguous:
        yield array
        return
    rows = max(1, block_bytes // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start:start + rows])
