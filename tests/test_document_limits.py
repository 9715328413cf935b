"""A folder run's first requests fit the account's input-token limit: the limiter counts each file's tokens before
it is sent (its stored request holds only a placeholder), so the first wave meets no 429."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import batchrun, cli_env
from tests.test_documents import pdf

MODEL = "claude-haiku-4-5"


def test_the_first_wave_of_a_document_run_meets_no_429(tmp_path: Path, emulator) -> None:
    """An input bucket of 10,000 tokens (600,000 a minute, enforced per second); 4 notes of about 1,000 tokens and
    4 two-page PDFs of 3,200: sent at once they would take 16,800."""
    emulator.configure(itpm=600_000, bucket_seconds=1.0)
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(4):
        (docs / f"note-{n}.txt").write_text(f"Note {n}. " + "The quarterly numbers look fine. " * 121)
        (docs / f"scan-{n}.pdf").write_bytes(pdf(2))
    job = tmp_path / "job.toml"
    job.write_text(f'model = "{MODEL}"\nmax_tokens = 100\nconcurrency = 16\ntemplate = "Summarise {{name}}."\n')
    db = tmp_path / "b.db"
    env = cli_env(emulator.base_url)
    done = batchrun(["submit", str(docs), "--job", str(job), "--db", str(db), "-q"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    stats = emulator.stats()
    assert stats["usage"]["messages"][MODEL]["input_tokens"] > 16_000  # the files were counted by the API
    assert stats["rate_limited"] == 0 and stats["requests"] == 8, stats
