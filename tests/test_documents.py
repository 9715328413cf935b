"""A folder of files as the input (issue 23): one item per file, the right block for each type, answers matched
to their files, nightly runs that send only new and changed files, bad files refused before anything is sent,
and the Files API option -- all through the batchrun command against the emulator."""

from __future__ import annotations

import base64
import csv
import struct
import zlib
from pathlib import Path

import anthropic
import orjson
import pytest

from batchrun.emulator.replies import expected_text
from tests.conftest import TEST_KEY, batchrun, cli_env, db_rows

MODEL = "claude-haiku-4-5"
FAST = ["--poll-interval", "0.02"]
TEMPLATE = "Summarise {name} ({suffix}, {bytes} bytes) in one line."
FILES_BETA = "files-api-2025-04-14"


def png(width: int, height: int) -> bytes:
    """A valid PNG of `width` x `height` red pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf(pages: int = 1, text: str = "hello") -> bytes:
    """A minimal PDF with `pages` pages (what the API and the emulator count: /Type /Page objects)."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = [
        "<</Type /Catalog /Pages 2 0 R>>",
        f"<</Type /Pages /Kids [{kids}] /Count {pages}>>",
        *["<</Type /Page /Parent 2 0 R /MediaBox [0 0 200 200]>>" for _ in range(pages)],
    ]
    body = "".join(f"{n} 0 obj {o} endobj\n" for n, o in enumerate(objects, start=1))
    return f"%PDF-1.4\n% {text}\n{body}trailer <</Root 1 0 R>>\n%%EOF\n".encode()


def make_folder(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("The cat sat on the mat.\n")
    (docs / "b.md").write_text("# Notes\n\nSome *markdown* here.\n")
    (docs / "c.pdf").write_bytes(pdf(2))
    (docs / "sub" / "d.png").write_bytes(png(4, 3))
    (docs / "notes.bin").write_bytes(b"\x00\x01\x02")
    (docs / ".hidden.txt").write_text("never sent")
    return docs


def job_file(root: Path, **extra: str) -> Path:
    lines = [f'model = "{MODEL}"', "max_tokens = 64", f'template = "{TEMPLATE}"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in extra.items()]
    path = root / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_block(path: Path) -> dict:
    """The block the API should receive for this file, built here from its bytes (independently of batchrun)."""
    raw = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": raw.decode()}}
    if suffix == ".pdf":
        data = base64.b64encode(raw).decode()
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}
    data = base64.b64encode(raw).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def expected_params(docs: Path, rel: str, block: dict | None = None) -> dict:
    path = docs / rel
    prompt = TEMPLATE.format(name=path.name, suffix=path.suffix, bytes=path.stat().st_size)
    content = [block or expected_block(path), {"type": "text", "text": prompt}]
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": content}]}


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def submit(tmp_path: Path, docs: Path | str, *extra: str) -> list[str]:
    return ["submit", str(docs), "--job", str(tmp_path / "job.toml"), "--db", str(tmp_path / "b.db"), *FAST, *extra]


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_a_folder_runs_with_the_right_block_for_each_file(tmp_path: Path, emulator, mode: str) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path, mode=mode)
    env = cli_env(emulator.base_url)
    out = batchrun([*submit(tmp_path, docs, "-o", str(tmp_path / "out.csv"))], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "skipped notes.bin: not a supported type" in out.stdout + out.stderr
    assert ".hidden" not in out.stdout + out.stderr
    rows = csv_rows(tmp_path / "out.csv")
    files = ["a.txt", "b.md", "c.pdf", "sub/d.png"]
    assert [r["file"] for r in rows] == files  # path order, one row per supported file
    for row in rows:  # the emulator's reply is a function of the request: each answer is its own file's
        assert row["text"] == expected_text(expected_params(docs, row["file"])), row["file"]
        assert row["state"] == "succeeded" and row["bytes"] == str((docs / row["file"]).stat().st_size)
    stats = emulator.stats()
    sent = stats["requests"] if mode == "online" else stats["batch_requests"]
    assert sent == 4
    assert b"KGNhdCBzYXQ" not in (tmp_path / "b.db").read_bytes()  # no file is stored in the database
    assert base64.b64encode((docs / "c.pdf").read_bytes())[:40] not in (tmp_path / "b.db").read_bytes()


def test_a_text_file_fills_the_template_with_its_text(tmp_path: Path, emulator) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The cat sat.")
    (tmp_path / "job.toml").write_text(f'model = "{MODEL}"\nmax_tokens = 64\ntemplate = "About {{file}}: {{text}}"\n')
    env = cli_env(emulator.base_url)
    out = batchrun([*submit(tmp_path, docs, "-o", str(tmp_path / "out.csv"))], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    content = [{"type": "text", "text": "About a.txt: The cat sat."}]  # in the prompt, no document block
    expected = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": content}]}
    assert csv_rows(tmp_path / "out.csv")[0]["text"] == expected_text(expected)
    (docs / "b.png").write_bytes(png(2, 2))  # an image has no {text}: refused, nothing sent
    emulator.reset()
    refused = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "b.png: the template names text, which a file does not have" in refused.stderr
    assert emulator.stats()["requests"] == 0


def test_a_glob_selects_files_and_ids_come_from_relative_paths(tmp_path: Path, emulator) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path)
    out = batchrun(
        [*submit(tmp_path, f"{docs}/**/*.png", "-o", str(tmp_path / "out.csv"))],
        cwd=tmp_path,
        env=cli_env(emulator.base_url),
    )
    assert out.returncode == 0, out.stderr
    rows = csv_rows(tmp_path / "out.csv")
    assert [r["file"] for r in rows] == ["sub/d.png"]
    assert rows[0]["custom_id"].startswith("sub_d_png-") and len(rows[0]["custom_id"]) <= 64
    assert emulator.stats()["requests"] == 1


def test_the_second_night_sends_only_new_and_changed_files(tmp_path: Path, emulator) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path)
    env = cli_env(emulator.base_url)
    first = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert emulator.stats()["requests"] == 4
    emulator.reset()
    (docs / "a.txt").write_text("The dog sat on the log.\n")  # changed
    (docs / "e.md").write_text("A new note.\n")  # new
    (docs / "b.md").unlink()  # deleted: simply absent
    second = batchrun([*submit(tmp_path, docs, "-o", str(tmp_path / "night2.csv"))], cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert emulator.stats()["requests"] == 2  # a.txt and e.md; c.pdf and sub/d.png from the response cache
    assert "2 item(s) from the response cache" in second.stdout + second.stderr
    rows = {r["file"]: r for r in csv_rows(tmp_path / "night2.csv")}
    assert sorted(rows) == ["a.txt", "c.pdf", "e.md", "sub/d.png"]
    assert {f: r["answered_by"] for f, r in rows.items()} == {
        "a.txt": "api", "c.pdf": "cache", "e.md": "api", "sub/d.png": "cache"
    }  # fmt: skip
    for rel, row in rows.items():
        assert row["text"] == expected_text(expected_params(docs, rel)), rel
    emulator.reset()
    third = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=env)  # nothing changed: the same run, nothing sent
    assert third.returncode == 0 and "continuing run" in third.stdout + third.stderr
    assert emulator.stats()["requests"] == 0


def test_bad_files_are_refused_before_anything_is_sent(tmp_path: Path, emulator) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fake.pdf").write_text("this is not a pdf")
    (docs / "long.pdf").write_bytes(pdf(101))
    (docs / "jpeg.png").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (docs / "huge.png").write_bytes(png(9000, 1)[:33] + b"\x00" * 20)  # the header says 9000 x 1
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (docs / "big.txt").write_bytes(b"a" * (33 * 1024 * 1024))
    (docs / "good.txt").write_text("fine")
    job_file(tmp_path)
    out = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=cli_env(emulator.base_url))
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    assert "fake.pdf: not a PDF" in err
    assert "long.pdf: 101 pages, over the API's 100-page limit" in err
    assert "jpeg.png: a JPEG image, though its extension says image/png" in err
    assert "huge.png: 9000 x 1 pixels, over the API's 8,000-pixel limit" in err
    assert "latin1.txt: not UTF-8 text" in err
    assert "big.txt: the request with this file would be 33.0 MB, over the API's 32 MB request limit" in err
    assert "good.txt" not in err and "Traceback" not in err
    assert emulator.stats()["requests"] == 0
    assert not (tmp_path / "b.db").exists()  # nothing stored


def test_the_emulator_agrees_on_the_limits(emulator) -> None:
    """What batchrun refuses, the emulator refuses too (a 101-page PDF, an image whose type is not its bytes')."""
    client = anthropic.Anthropic(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=0)
    long = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf(101)).decode()}
    with pytest.raises(anthropic.BadRequestError, match="100 PDF pages"):
        client.messages.create(
            model=MODEL, max_tokens=8,
            messages=[
                {"role": "user", "content": [{"type": "document", "source": long}, {"type": "text", "text": "x"}]}
            ],
        )  # fmt: skip
    jpeg = {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(40)).decode(),
    }
    with pytest.raises(anthropic.BadRequestError, match="does not match"):
        client.messages.create(
            model=MODEL, max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "image", "source": jpeg}, {"type": "text", "text": "x"}]}],
        )  # fmt: skip


def test_a_file_changed_under_an_unfinished_run_is_refused(tmp_path: Path, emulator) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path)
    env = cli_env(emulator.base_url)
    first = batchrun([*submit(tmp_path, docs, "--limit", "1")], cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stderr
    run_id = db_rows(tmp_path / "b.db", "SELECT id FROM runs")[0][0]
    (docs / "c.pdf").write_bytes(pdf(3))  # another size
    emulator.reset()
    resumed = batchrun(["resume", run_id, "--db", str(tmp_path / "b.db")], cwd=tmp_path, env=env)
    assert resumed.returncode == 2
    assert f"c.pdf: changed since run {run_id} was created" in resumed.stderr
    assert emulator.stats()["requests"] == 0
    # the same size, other bytes: caught when the file is read to be sent; the item fails, nothing is sent for it
    (docs / "c.pdf").write_bytes(pdf(2).replace(b"hello", b"HELLO"))
    again = batchrun(["resume", run_id, "--db", str(tmp_path / "b.db")], cwd=tmp_path, env=env)
    assert again.returncode == 1, again.stderr
    assert emulator.stats()["requests"] == 2  # b.md and sub/d.png
    failed = db_rows(tmp_path / "b.db", "SELECT source_id, error_type, error_message FROM items WHERE state = 'failed'")
    assert [(f, t) for f, t, _ in failed] == [("c.pdf", "file_changed")]
    assert "c.pdf: changed since its run was created" in failed[0][2]


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_files_are_uploaded_once_with_the_files_api(tmp_path: Path, emulator, mode: str) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path, mode=mode, files="upload")
    env = cli_env(emulator.base_url)
    out = batchrun([*submit(tmp_path, docs, "-o", str(tmp_path / "out.csv"))], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert emulator.stats()["files_uploaded"] == 4
    uploads = dict(db_rows(tmp_path / "b.db", "SELECT file, file_id FROM uploads"))
    assert sorted(uploads) == ["a.txt", "b.md", "c.pdf", "sub/d.png"]
    rows = {r["file"]: r for r in csv_rows(tmp_path / "out.csv")}
    for rel, row in rows.items():  # each request named its own upload
        kind = "image" if rel.endswith(".png") else "document"
        block = {"type": kind, "source": {"type": "file", "file_id": uploads[rel]}}
        assert row["text"] == expected_text(expected_params(docs, rel, block)), rel
    client = anthropic.Anthropic(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=0)
    meta = client.beta.files.retrieve_metadata(uploads["c.pdf"], betas=[FILES_BETA])
    assert meta.mime_type == "application/pdf" and meta.size_bytes == (docs / "c.pdf").stat().st_size
    # the next night: only the new file is uploaded, and only it is sent
    emulator.reset()
    (docs / "e.pdf").write_bytes(pdf(1, "new"))
    later = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=env)
    assert later.returncode == 0, later.stderr
    assert emulator.stats()["files_uploaded"] == 1
    sent = emulator.stats()["requests" if mode == "online" else "batch_requests"]
    assert sent == 1


def test_the_emulator_checks_file_references(emulator) -> None:
    client = anthropic.Anthropic(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=0)
    uploaded = client.beta.files.upload(file=("a.pdf", pdf(1), "application/pdf"), betas=[FILES_BETA])
    assert uploaded.id.startswith("file_") and uploaded.mime_type == "application/pdf"
    listed = client.beta.files.list(betas=[FILES_BETA])
    assert [f.id for f in listed.data] == [uploaded.id]

    def ask(file_id: str, beta: bool) -> str:
        block = {"type": "document", "source": {"type": "file", "file_id": file_id}}
        message = client.messages.create(
            model=MODEL, max_tokens=8,
            messages=[{"role": "user", "content": [block, {"type": "text", "text": "x"}]}],
            extra_headers={"anthropic-beta": FILES_BETA} if beta else None,
        )  # fmt: skip
        return message.content[0].text

    assert ask(uploaded.id, beta=True).startswith("emu-")
    with pytest.raises(anthropic.BadRequestError, match="beta header"):
        ask(uploaded.id, beta=False)
    with pytest.raises(anthropic.BadRequestError, match="not found"):
        ask("file_missing", beta=True)
    block = {"type": "document", "source": {"type": "file", "file_id": uploaded.id}}
    request = {"custom_id": "r1", "params": {"model": MODEL, "max_tokens": 8, "messages": [
        {"role": "user", "content": [block, {"type": "text", "text": "x"}]}]}}  # fmt: skip
    with pytest.raises(anthropic.BadRequestError, match="beta header"):  # a batch naming files needs it on create
        client.messages.batches.create(requests=[request])
    assert client.messages.batches.create(requests=[request], extra_headers={"anthropic-beta": FILES_BETA}).id
    client.beta.files.delete(uploaded.id, betas=[FILES_BETA])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(uploaded.id, betas=[FILES_BETA])


def test_batches_are_cut_by_the_size_of_the_files_they_carry(tmp_path: Path, emulator) -> None:
    """The stored requests are small (placeholders); the batches are cut by what is sent, files included."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"{n}.txt").write_text(f"file {n} " + "word " * 600)  # about 3 KB each
    job_file(tmp_path, mode="batch", batch_max_bytes=5000)
    out = batchrun(
        [*submit(tmp_path, docs, "-o", str(tmp_path / "out.csv"))], cwd=tmp_path, env=cli_env(emulator.base_url)
    )
    assert out.returncode == 0, out.stderr
    assert emulator.stats()["batches_created"] == 3  # one file's request per batch: two would be over 5,000 bytes
    for row in csv_rows(tmp_path / "out.csv"):
        assert row["text"] == expected_text(expected_params(docs, row["file"])), row["file"]


def test_skipped_files_are_listed_then_counted(tmp_path: Path, emulator) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello")
    for n in range(23):
        (docs / f"x{n:02d}.bin").write_bytes(b"\x00")
    job_file(tmp_path)
    out = batchrun(submit(tmp_path, docs), cwd=tmp_path, env=cli_env(emulator.base_url))
    assert out.returncode == 0, out.stderr
    said = out.stdout + out.stderr
    assert said.count("skipped x") == 20 and "skipped x19.bin" in said and "skipped x20.bin" not in said
    assert "skipped 3 more file(s) of unsupported types" in said
    assert emulator.stats()["requests"] == 1


def test_a_resumed_upload_run_uploads_nothing_again(tmp_path: Path, emulator) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path, files="upload")
    env = cli_env(emulator.base_url)
    first = batchrun([*submit(tmp_path, docs, "--limit", "1")], cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stderr
    assert emulator.stats()["files_uploaded"] == 4 and emulator.stats()["requests"] == 1
    run_id = db_rows(tmp_path / "b.db", "SELECT id FROM runs")[0][0]
    resumed = batchrun(["resume", run_id, "--db", str(tmp_path / "b.db")], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.stats()["files_uploaded"] == 4 and emulator.stats()["requests"] == 4  # none uploaded again


def test_a_batch_already_sent_is_collected_whatever_became_of_its_files(tmp_path: Path, emulator) -> None:
    docs = make_folder(tmp_path)
    job_file(tmp_path, mode="batch")
    env = cli_env(emulator.base_url)
    first = batchrun([*submit(tmp_path, docs, "--no-wait")], cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stderr
    run_id = db_rows(tmp_path / "b.db", "SELECT id FROM runs")[0][0]
    (docs / "c.pdf").unlink()  # sent already: its answer is collected
    resumed = batchrun(["resume", run_id, "--db", str(tmp_path / "b.db"), *FAST], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.stats()["batches_created"] == 1


def test_the_readme_nightly_example_runs_as_printed(tmp_path: Path, emulator) -> None:
    """jobs/examples/docs with jobs/summarize_folder.toml, the README's two nights (on the test's emulator)."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "jobs", tmp_path / "jobs")
    shutil.copytree(tmp_path / "jobs" / "examples" / "docs", tmp_path / "inbox")
    env = cli_env(emulator.base_url)
    night = ["submit", "inbox", "--job", "jobs/summarize_folder.toml", "--db", "nightly.db", "-q"]
    first = batchrun([*night, "-o", "night1.csv"], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert emulator.stats()["requests"] == 4
    (tmp_path / "inbox" / "minutes.txt").write_text("Minutes of Tuesday: the launch moves to May.\n")
    with (tmp_path / "inbox" / "office-move.md").open("a") as f:
        f.write("The move is planned for April now.\n")
    emulator.reset()
    second = batchrun([*night, "-o", "night2.csv"], cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert emulator.stats()["requests"] == 2 and "3 item(s) from the response cache" in second.stdout + second.stderr
    answered = {r["file"]: r["answered_by"] for r in csv_rows(tmp_path / "night2.csv")}
    assert answered == {
        "minutes.txt": "api", "office-move.md": "api", "on-call.txt": "cache", "reports/chart.png": "cache",
        "reports/q3.pdf": "cache",
    }  # fmt: skip


def test_delete_leaves_no_row_of_the_run_in_any_table(tmp_path: Path, emulator) -> None:
    """A folder run has rows in item_files too: delete removes them with the rest (every table with a run_id)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The cat sat.")
    (tmp_path / "docs" / "c.pdf").write_bytes(pdf(1))
    job_file(tmp_path)
    env = cli_env(emulator.base_url)
    done = batchrun([*submit(tmp_path, tmp_path / "docs"), "--run-id", "folder"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    db = tmp_path / "b.db"
    tables = [t for (t,) in db_rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    with_run_id = [t for t in tables if any(c == "run_id" for (_, c, *_) in db_rows(db, f'PRAGMA table_info("{t}")'))]
    assert "item_files" in with_run_id and db_rows(db, "SELECT count(*) FROM item_files") == [(2,)]
    deleted = batchrun(["delete", "folder", "--db", str(db)], cwd=tmp_path, env=env)
    assert deleted.returncode == 0, deleted.stderr
    left = {t: db_rows(db, f'SELECT count(*) FROM "{t}" WHERE run_id = ?', ["folder"])[0][0] for t in with_run_id}
    assert left == dict.fromkeys(with_run_id, 0)
