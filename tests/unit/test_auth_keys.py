"""Workers that boot together share one auth secret: the first to write it wins, nobody overwrites it."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _secret(data_dir: str) -> bytes:
    from app.auth.keys import AuthKeys

    return AuthKeys(Path(data_dir)).secret


def test_parallel_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4) as pool:
        found = list(pool.map(_secret, [str(tmp_path)] * 8))
    assert len(set(found)) == 1 and len(found[0]) == 32
    assert (tmp_path / "auth" / "secret.key").read_bytes() == found[0]
    assert (tmp_path / "auth" / "secret.key").stat().st_mode & 0o777 == 0o600
