"""Peak memory of `batchrun submit FOLDER` as the folder grows: are files read when their item is sent, or held?

    python bench/documents.py                          # 1,000 then 10,000 PDFs of 1 MiB (10 GiB of disk)
    python bench/documents.py --counts 200,2000 --size 262144
    python bench/documents.py --mode batch --counts 1000

Each folder is written to --dir (default: a temporary folder under /work), every file a distinct valid PDF of
--size bytes (a one-page PDF padded with a comment, so no two files share a hash and none is answered from the
response cache). `python -m batchrun submit FOLDER --job JOB -q --db TMP.db` then runs in a process of its own
against a zero-latency, unlimited emulator (its own process), and its peak RSS is that process's ru_maxrss from
wait4() (VmRSS sampled every 0.5 s says when). Constant memory means the peak at 10,000 files is about the
peak at 1,000.

Measured 2026-12-03 (2 shared cores, load average about 10, anthropic 2.16.0), `python bench/documents.py`:
1,000 files (0.98 GiB) peak RSS 284.5 MB in 319 s; 10,000 files (9.77 GiB) 303.1 MB (1.07x) in 1,472 s; 1,000 and
10,000 requests sent; database 1.7 and 15.0 MB. The process is about 176 MB before it reads a file (imports);
each request in flight adds about 6-7 MB (the file, its base64, the JSON body).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Emulator, banner, child_env, fmt, machine, run_child, table, versions

PYTHON = sys.executable
MODEL = "claude-haiku-4-5"
PAGE = b"1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [3 0 R] /Count 1>> endobj\n"
PAGE += b"3 0 obj <</Type /Page /Parent 2 0 R /MediaBox [0 0 200 200]>> endobj\n"


def write_folder(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    filler = b"%" + b"x" * (size - 1)
    for i in range(count):
        head = b"%PDF-1.4\n% file " + str(i).encode() + b"\n" + PAGE
        tail = b"trailer <</Root 1 0 R>>\n%%EOF\n"
        pad = size - len(head) - len(tail) - 1
        (folder / f"doc-{i:06d}.pdf").write_bytes(head + filler[:pad] + b"\n" + tail)


def one(emu: object, workdir: Path, count: int, size: int, mode: str, concurrency: int) -> dict:
    emu.reset()  # type: ignore[attr-defined]
    run_dir = Path(tempfile.mkdtemp(prefix=f"docs-{count}-", dir=workdir))
    folder = run_dir / "docs"
    write_folder(folder, count, size)
    job = run_dir / "job.toml"
    settings = [f'model = "{MODEL}"', "max_tokens = 64", "accept_truncated = true", f'mode = "{mode}"']
    settings += ['template = "Summarise {name}."', "poll_interval = 0.5"]
    job.write_text("\n".join(settings) + "\n")
    db = run_dir / "bench.db"
    argv = [PYTHON, "-m", "batchrun", "submit", str(folder), "--job", str(job), "-q", "--db", str(db)]
    argv += ["--concurrency", str(concurrency)]
    child = run_child(argv, env=child_env(emu.base_url), cwd=run_dir, timeout=3600, sample_rss=0.5)  # type: ignore[attr-defined]
    if child.returncode != 0:
        raise RuntimeError(f"batchrun exited {child.returncode}:\n{child.stderr[-3000:]}")
    stats = emu.stats()  # type: ignore[attr-defined]
    db_mb = sum(p.stat().st_size for p in run_dir.glob("bench.db*")) / 2**20
    shutil.rmtree(run_dir)
    return {
        "count": count,
        "gib": count * size / 2**30,
        "wall": child.wall,
        "rss": child.maxrss_mb,
        "sent": stats["requests"] if mode == "online" else stats["batch_requests"],
        "db_mb": db_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000", help="folder sizes, in files (comma-separated)")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per file (default 1 MiB)")
    parser.add_argument("--mode", choices=("online", "batch"), default="online")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dir", default="/work", help="where the folders are written (removed after each size)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    banner(f"documents: peak RSS of `batchrun submit FOLDER` ({args.mode}, files of {args.size:,} bytes)")
    print(machine())
    print(versions())
    workdir = Path(tempfile.mkdtemp(prefix="bench-documents-", dir=args.dir))
    rows = []
    try:
        with Emulator() as emu:
            for count in counts:
                r = one(emu, workdir, count, args.size, args.mode, args.concurrency)
                rows.append(r)
                print(f"{count:,} files: peak RSS {r['rss']:.1f} MB, {r['wall']:.1f} s, {r['sent']:,} sent", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        table(
            ["files", "GiB", "wall s", "peak RSS MB", "requests sent", "db MB"],
            [
                [
                    f"{r['count']:,}",
                    fmt(r["gib"], ".2f"),
                    fmt(r["wall"]),
                    fmt(r["rss"]),
                    f"{r['sent']:,}",
                    fmt(r["db_mb"]),
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
