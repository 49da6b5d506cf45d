"""A synchronous wrapper around pygls' JSON-RPC client that drives `qalc lsp` over stdio.

Shared by the protocol tests and benchmarks/lsp.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


class Client:
    """`qalc lsp` in a subprocess, and the diagnostics it has published, per URI."""

    def __init__(self, root: Path = ROOT, debounce_ms: float | None = None,
                 capabilities: types.ClientCapabilities | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = LanguageClient("qalc-tests", "1")
        self.diagnostics: dict[str, list[types.Diagnostic]] = {}
        self.diagnostic_times: dict[str, float] = {}
        self.versions: dict[str, int | None] = {}
        self.expected: dict[str, int] = {}  # uri -> the version last sent
        self.opened: set[str] = set()

        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def on_diagnostics(params: types.PublishDiagnosticsParams) -> None:
            self.diagnostics[params.uri] = params.diagnostics
            self.diagnostic_times[params.uri] = time.perf_counter()
            self.versions[params.uri] = params.version

        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.run(self.client.start_io(sys.executable, "-m", "qalign_dsl", "lsp", env=env,
                                      cwd=str(root)))
        options: dict[str, Any] = {}
        if debounce_ms is not None:
            options["debounceMs"] = debounce_ms
        self.init = self.run(self.client.initialize_async(types.InitializeParams(
            capabilities=capabilities or types.ClientCapabilities(),
            root_uri=from_fs_path(str(root)),
            workspace_folders=[types.WorkspaceFolder(uri=from_fs_path(str(root)) or "",
                                                     name="root")],
            initialization_options=options)))
        self.client.initialized(types.InitializedParams())

    def run(self, awaitable: Awaitable[T], timeout: float = 30) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, timeout))

    def pump(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def open(self, path: Path, text: str | None = None) -> str:
        uri = from_fs_path(str(path.resolve())) or ""
        if uri in self.opened:
            self.client.text_document_did_close(types.DidCloseTextDocumentParams(
                text_document=types.TextDocumentIdentifier(uri=uri)))
        self.opened.add(uri)
        self.diagnostics.pop(uri, None)
        self.versions.pop(uri, None)
        self.expected[uri] = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="qal", version=1,
                text=path.read_text(encoding="utf-8") if text is None else text)))
        return uri

    def change(self, uri: str, version: int, text: str,
               range_: types.Range | None = None) -> None:
        self.expected[uri] = version
        change: types.TextDocumentContentChangeEvent
        if range_ is None:
            change = types.TextDocumentContentChangeWholeDocument(text=text)
        else:
            change = types.TextDocumentContentChangePartial(range=range_, text=text)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[change]))

    def wait_diagnostics(self, uri: str, version: int | None = None,
                         timeout: float = 20) -> list[types.Diagnostic]:
        deadline = time.monotonic() + timeout
        version = version if version is not None else self.expected.get(uri)
        while time.monotonic() < deadline:
            if uri in self.diagnostics and (version is None or self.versions.get(uri) == version):
                return self.diagnostics[uri]
            self.pump(0.005)
        raise TimeoutError(f"no diagnostics for {uri} (version {version})")

    def close(self) -> None:
        try:
            self.run(self.client.shutdown_async(None), timeout=10)
            self.client.exit(None)
            self.run(self.client.stop(), timeout=10)
        finally:
            self.loop.close()


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def doc(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


def find(text: str, needle: str, occurrence: int = 0, offset: int = 0) -> types.Position:
    """The LSP position of the `occurrence`-th `needle` in text (plus `offset` characters)."""
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(needle, index + 1)
    index += offset
    line = text.count("\n", 0, index)
    return pos(line, index - (text.rfind("\n", 0, index) + 1))
