"""429s met by a folder run at a low input-token limit: the limiter must count each file's tokens before it sends.

    python bench/document_limits.py [--notes 40] [--pdfs 20] [--itpm 600000]

The emulator enforces ITPM per second (bucket_seconds 1); notes of about 1,000 tokens, two-page PDFs of 3,200.
Prints the 429s the emulator answered, the requests, and the run's wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchrun.emulator.process import EmulatorProcess  # noqa: E402


def pdf(pages: int) -> bytes:
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [
        "<</Type /Catalog /Pages 2 0 R>>",
        f"<</Type /Pages /Kids [{kids}] /Count {pages}>>",
        *["<</Type /Page /Parent 2 0 R /MediaBox [0 0 200 200]>>" for _ in range(pages)],
    ]
    body = "".join(f"{n} 0 obj {o} endobj\n" for n, o in enumerate(objects, start=1))
    return f"%PDF-1.4\n{body}trailer <</Root 1 0 R>>\n%%EOF\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notes", type=int, default=40)
    parser.add_argument("--pdfs", type=int, default=20)
    parser.add_argument("--itpm", type=int, default=600_000)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(itpm=a.itpm, bucket_seconds=1.0) as emulator:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        for n in range(a.notes):
            (docs / f"note-{n}.txt").write_text(f"Note {n}. " + "The quarterly numbers look fine. " * 121)
        for n in range(a.pdfs):
            (docs / f"scan-{n}.pdf").write_bytes(pdf(2))
        job = root / "job.toml"
        settings = ['model = "claude-haiku-4-5"', "max_tokens = 100", "concurrency = 32"]
        settings.append('template = "Summarise {name}."')
        job.write_text("\n".join(settings) + "\n")
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": emulator.base_url}
        started = time.monotonic()
        code = subprocess.run(
            [sys.executable, "-m", "batchrun", "submit", str(docs), "--job", str(job), "-q"],
            cwd=root,
            env=env,
            capture_output=True,
        ).returncode
        seconds = time.monotonic() - started
        stats = emulator.stats()
        print(
            f"{a.notes} notes + {a.pdfs} PDFs at ITPM {a.itpm:,}: exit {code}, {stats['requests']} requests, "
            f"{stats['rate_limited']} 429s, {seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
