"""Review self-instruct pairs in the terminal, one key per decision.

    python -m tools.review                      # the pending pairs of data/selfinstruct/review.jsonl
    python -m tools.review --status rejected    # look at the rejected ones again (or: accepted, edited, all)

Each pair is shown with the most similar instruction that existed when it was generated (and their
ROUGE-L), then one key: a accept, r reject (then a note, Enter for none), e edit in $VISUAL/$EDITOR (the
model's own text is kept under `original`), s skip, q quit. Every decision is written to the file at once,
so quitting or a closed terminal loses nothing. Commit the file: it is what prepare reads
(docs/selfinstruct.md). Do not run it while the selfinstruct stage runs: both write the file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from ta import paths
from ta.errors import SelfInstructError, report
from ta.selfinstruct.review import STATUSES, Row, decide, edit_text, edited, parse_edit, read_review, write_review

KEYS = "[a] accept  [r] reject  [e] edit  [s] skip  [q] quit"


def read_key(prompt: str) -> str:
    """One key press, without Enter on a terminal; the first character of a line otherwise."""
    print(prompt, end="", flush=True)
    if not sys.stdin.isatty():
        return (sys.stdin.readline() or "q")[:1]
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        key = sys.stdin.read(1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    print(key)
    return key


def show(row: Row, position: int, total: int) -> None:
    origin = row.get("provenance") or {}
    facts = " · ".join(str(v) for v in (row["id"], row.get("subject"), row.get("difficulty"), origin.get("model")) if v)
    print(f"\n─── {position}/{total} {row['status']} · {facts} ───")
    print("instruction:")
    print(indent(row["instruction"]))
    print("answer:")
    print(indent(row["answer"]))
    nearest = row.get("nearest")
    if nearest:
        print(f"nearest existing instruction (ROUGE-L {nearest['rouge_l']:.2f}, {nearest['source']}):")
        print(indent(nearest["instruction"]))
    else:
        print("nearest existing instruction: (none)")
    if row.get("note"):
        print(f"note: {row['note']}")


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def edit(row: Row, editor: str) -> Row | None:
    """The row as the reviewer rewrote it in their editor; None when they cancelled or changed nothing."""
    with tempfile.NamedTemporaryFile("w", suffix=".md", encoding="utf-8", delete=False) as f:
        f.write(edit_text(row))
        path = Path(f.name)
    try:
        result = subprocess.run([*shlex.split(editor), str(path)])
        if result.returncode != 0:
            print(f"the editor exited with {result.returncode}: the pair is unchanged")
            return None
        fields = parse_edit(path.read_text(encoding="utf-8"))
    finally:
        path.unlink(missing_ok=True)
    if fields is None or all(fields[name] == row.get(name, "").strip() for name in fields):
        print("nothing changed")
        return None
    return edited(row, fields["instruction"], fields["answer"], fields["note"])


def review(file: Path, status: str, editor: str) -> dict[str, int]:
    rows = read_review(file)
    todo = [i for i, row in enumerate(rows) if status == "all" or row["status"] == status]
    decided = dict.fromkeys(("accepted", "rejected", "edited", "skipped"), 0)
    if not todo:
        print(f"{file}: no {status} pairs")
        return decided
    for position, i in enumerate(todo, 1):
        while True:
            show(rows[i], position, len(todo))
            key = read_key(f"{KEYS}: ").lower()
            if key == "a":
                rows[i] = decide(rows[i], "accepted")
            elif key == "r":
                rows[i] = decide(rows[i], "rejected", input("note (why; Enter for none): ").strip())
            elif key == "e":
                try:
                    changed = edit(rows[i], editor)
                except SelfInstructError as err:
                    print(f"not saved: {err}")
                    continue
                if changed is None:
                    continue
                rows[i] = changed
            elif key == "s":
                decided["skipped"] += 1
                break
            elif key in ("q", "\x04", ""):
                return decided
            else:
                continue
            write_review(file, rows)
            decided[rows[i]["status"]] += 1
            break
    return decided


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.review", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file", type=Path, default=paths.REVIEW_FILE, help="the review file (default: %(default)s)")
    parser.add_argument("--status", choices=[*STATUSES, "all"], default="pending", help="which pairs to go through")
    parser.add_argument("--editor", help="command for [e] (default: $VISUAL, $EDITOR, else vi)")
    args = parser.parse_args(argv)
    editor = args.editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"

    def body() -> None:
        try:
            decided = review(args.file, args.status, editor)
        except KeyboardInterrupt:
            print("\nstopped; every decision so far is saved")
            return
        print("\n" + ", ".join(f"{count} {what}" for what, count in decided.items()) + f"; saved in {args.file}")

    return report("review", body)


if __name__ == "__main__":
    sys.exit(main())
