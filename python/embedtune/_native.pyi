"""Type stubs of the native module (Rust, PyO3). Use the `embedtune` package
API; these are its building blocks."""

from typing import List, Optional

class EmbedtuneError(ValueError):
    """An embedtune error, with the one-line message the command line prints."""

class Embedder:
    def __init__(
        self,
        model: str,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_len: Optional[int] = None,
        batch_size: Optional[int] = None,
        device: str = "auto",
        dtype: str = "f32",
    ) -> None: ...
    def encode(self, texts: List[str]) -> bytearray:
        """Little-endian float32 bytes, row-major (len(texts), dim)."""
    @property
    def dim(self) -> int: ...
    @property
    def pooling(self) -> str: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def max_len(self) -> int: ...
    @property
    def model(self) -> str: ...

def diagnose(
    embedder: Embedder,
    texts: Optional[List[str]] = None,
    max_samples: Optional[int] = None,
    seed: Optional[int] = None,
    alignment_samples: Optional[int] = None,
    token_samples: Optional[int] = None,
) -> str:
    """The diagnosis as JSON."""

def fit(flags: List[str], verbose: bool = True) -> str:
    """`embedtune fit` with these flags; the report as JSON."""

class VectorStats:
    def __init__(
        self,
        dim: int,
        seed: Optional[int] = None,
        reservoir: Optional[int] = None,
        histogram_bins: Optional[int] = None,
        t: Optional[float] = None,
    ) -> None: ...
    def add(self, rows: bytes) -> None:
        """Rows as little-endian float32 bytes, row-major."""
    def merge(self, other: "VectorStats") -> None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> "VectorStats": ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    def finish(self) -> str:
        """The figures as JSON."""
