"""Resource Graph queries checked by Microsoft's Kusto parser, as Resource Graph checks them
before it runs one: the simulator answers 400 `InvalidQuery` to a query the parser rejects.

The parser is the npm package `@kusto/language-service-next` (Kusto.Language compiled to
JavaScript), run by Node in one long-lived process (`kql_check.js`). `make test` installs it
under `.cache/kusto`; `FINOPS_SIM_KUSTO` names another folder holding its `node_modules`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

PACKAGE = "@kusto/language-service-next"
FOLDER = Path(__file__).resolve().parents[2] / ".cache" / "kusto"
SCRIPT = Path(__file__).with_name("kql_check.js")


class KqlChecker:
    """One Node process answering one query at a time; answers kept by query text."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._answers: dict[str, dict] = {}
        self._proc: subprocess.Popen | None = None

    @classmethod
    def find(cls) -> KqlChecker | None:
        """The process's one checker (Node takes a second to load the parser, so every
        simulator shares it), or None where Node or the parser package is not installed."""
        folder = Path(os.environ.get("FINOPS_SIM_KUSTO") or FOLDER)
        if not shutil.which("node") or not (folder / "node_modules" / PACKAGE).is_dir():
            return None
        return _shared(folder.resolve())

    def errors(self, query: str) -> list[dict]:
        """The parser's errors (code, message, start, length); empty for a valid query."""
        with self._lock:
            if query not in self._answers:
                self._answers[query] = self._ask(query)
            return self._answers[query]["errors"]

    def _ask(self, query: str) -> dict:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["node", str(SCRIPT), str(self.folder)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps({"query": query}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the Kusto parser process ended without an answer")
        answer = json.loads(line)
        if "failure" in answer:
            raise RuntimeError(f"the Kusto parser failed: {answer['failure']}")
        return answer


@functools.cache
def _shared(folder: Path) -> KqlChecker:
    # its Node process ends with this one: its stdin closes
    return KqlChecker(folder)
