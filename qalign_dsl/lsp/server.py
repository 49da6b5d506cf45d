"""`qalc lsp`: the language server, on stdio, built on pygls.

Every feature reuses the compiler (parser, modules, checker, formatter) through
`analysis.analyze`; this module only keeps per-buffer state and speaks the protocol.
Diagnostics are computed off the request path: a change schedules one analysis per buffer
after a short debounce, and changes that arrive meanwhile are coalesced into it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument, Workspace

from qalign_dsl.lang.diagnostics import Span
from qalign_dsl.lang.fmt import format_module
from qalign_dsl.lang.modules import SourceUnavailable, read_file_bytes
from qalign_dsl.lsp import actions, completion, hover, navigation, tokens
from qalign_dsl.lsp.analysis import Analysis, analyze
from qalign_dsl.lsp.convert import Lines, to_lsp_diagnostic
from qalign_dsl.lsp.incremental import IncrementalParser
from qalign_dsl.lsp.index import file_key
from qalign_dsl.lsp.linemap import LineMap
from qalign_dsl.lsp.words import offset_of

logger = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 0.01
REQUEST_FAILED = -32803  # LSP's RequestFailed
MAX_WORKSPACE_FILES = 500
WORKSPACE_WALK_S = 2.0
WORKSPACE_WALK_TTL_S = 5.0
_SKIPPED_FOLDERS = ("node_modules", "__pycache__", "site-packages", "venv")


class QalServer(LanguageServer):
    def __init__(self, version: str = "") -> None:
        super().__init__("qalc", version,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.debounce_s = DEFAULT_DEBOUNCE_S
        self.analyses: dict[str, Analysis] = {}  # uri -> the latest analysis
        self.good: dict[str, Analysis] = {}  # uri -> the latest analysis that parsed
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.stale: set[str] = set()  # buffers whose imports changed since their analysis
        self.notify_importers: set[str] = set()  # pending runs that re-check importers after
        self.parsers: dict[str, IncrementalParser] = {}  # uri -> its incremental parser
        self.published: dict[str, tuple[int | None, list[types.Diagnostic]]] = {}
        self.roots: list[str] = []
        self.client_uris: dict[str, str] = {}  # unquoted URI -> the URI the client sent
        self.encoding = "utf-16"  # the position encoding negotiated at initialize
        self._disk: dict[str, tuple[float, Analysis]] = {}  # workspace files not open
        self._walk: tuple[float, list[str]] | None = None  # (when, the workspace's .qal files)

    # --- paths and text
    def lines(self, text: str) -> Lines:
        """Position conversions in the encoding negotiated with the client."""
        return Lines(text, self.encoding)

    @staticmethod
    def path_of(uri: str) -> str:
        return to_fs_path(uri) or uri

    @staticmethod
    def uri_of(path: str) -> str:
        return from_fs_path(os.path.abspath(path)) or path

    # pygls keys its documents by the unquoted URI ("file:///My Rubrics/a.qal"); the server
    # keeps the client's own spelling ("file:///My%20Rubrics/a.qal") for everything it sends
    # back, or a client would not match the diagnostics to the file.
    def is_open(self, uri: str) -> bool:
        return unquote(uri) in self.workspace.text_documents

    def open_documents(self) -> list[tuple[str, TextDocument]]:
        return [(self.client_uris.get(key, key), document)
                for key, document in self.workspace.text_documents.items()]

    def open_texts(self) -> dict[str, str]:
        return {file_key(self.path_of(uri)): doc.source
                for uri, doc in self.open_documents()}

    def read_bytes(self, path: Path) -> bytes:
        """Files as the editor has them: an open buffer wins over the disk."""
        text = self.open_texts().get(file_key(str(path)))
        if text is not None:  # (lone surrogates become bytes that are not UTF-8: QAL006)
            return text.encode("utf-8", "surrogatepass")
        return read_file_bytes(path)

    def lines_of(self, path: str) -> Lines:
        key = file_key(path)
        text = self.open_texts().get(key)
        if text is None:
            for analysis in [*self.analyses.values(), *(a for _, a in self._disk.values())]:
                found = next((f.text for f in analysis.program.files.values()
                              if file_key(f.path) == key), None)
                if found is not None:
                    text = found
                    break
        if text is None:
            try:
                text = read_file_bytes(Path(path)).decode("utf-8", "replace")
            except SourceUnavailable:
                text = ""
        return self.lines(text)

    def location(self, path: str, span: Span) -> types.Location:
        return types.Location(uri=self.uri_of(path), range=self.lines_of(path).range(span))

    # --- analysis
    def analysis(self, uri: str) -> Analysis:
        """The analysis of the buffer's current text (computed now if a change is pending)."""
        document = self.workspace.get_text_document(uri)
        current = self.analyses.get(uri)
        if current is not None and current.version == document.version \
                and current.text == document.source and uri not in self.stale:
            return current
        return self._analyze(uri)

    def best(self, uri: str) -> Analysis:
        """For navigation: the current analysis, or the last one that parsed while the buffer
        is half-typed (see `view`)."""
        current = self.analysis(uri)
        if current.program.entry is not None or uri not in self.good:
            return current
        return self.good[uri]

    def view(self, uri: str, position: types.Position) -> tuple[Analysis, int, int, LineMap | None]:
        """The analysis to navigate with, the position in its text (1-based line, column), and
        the map back to the buffer when that analysis is older than the buffer. The line under
        the cursor maps to 0 when it changed since."""
        analysis = self.best(uri)
        document = self.workspace.get_text_document(uri)
        buffer = self.lines(document.source)
        line, column = buffer.position(position)
        if analysis.text == document.source:
            return analysis, line, column, None
        mapping = LineMap(analysis.text, document.source)
        return analysis, mapping.to_old(line) or 0, column, mapping

    def here(self, path: str, span: Span, uri: str, mapping: LineMap | None) -> Span | None:
        """A span of an analysis, in the buffer's terms (None if its line changed since)."""
        if mapping is None or file_key(path) != file_key(self.path_of(uri)):
            return span
        return mapping.to_new(span)

    def _analyze(self, uri: str) -> Analysis:
        document = self.workspace.get_text_document(uri)
        self.stale.discard(uri)
        parser = self.parsers.setdefault(uri, IncrementalParser())
        analysis = analyze(document.source, self.path_of(uri), document.version,
                           self.read_bytes, parser)
        self.analyses[uri] = analysis
        if analysis.program.entry is not None:
            self.good[uri] = analysis
        return analysis

    def schedule(self, uri: str, importers: bool = True, stale: bool = False) -> None:
        if stale:
            self.stale.add(uri)
        if importers:  # kept when this joins a pending run that was not going to
            self.notify_importers.add(uri)
        task = self.pending.get(uri)
        if task is not None and not task.done():
            return  # the scheduled run reads the latest text: changes are coalesced
        self.pending[uri] = asyncio.ensure_future(self._run(uri))

    async def _run(self, uri: str) -> None:
        await asyncio.sleep(self.debounce_s)
        self.pending.pop(uri, None)
        importers = uri in self.notify_importers
        self.notify_importers.discard(uri)
        if not self.is_open(uri):
            return
        try:
            analysis = self.analysis(uri)
            self.publish()
        except Exception:  # never let one buffer take the server down
            logger.exception("analysis of %s failed", uri)
            return
        if importers:
            changed = file_key(analysis.path)
            for other, previous in list(self.analyses.items()):
                if other != uri and changed in previous.files() \
                        and self.is_open(other):
                    self.schedule(other, importers=False, stale=True)

    def publish(self) -> None:
        """Publish diagnostics per file: an open file gets its own analysis's diagnostics, a
        file that is not open the ones its importers found in it (as `qalc check` shows)."""
        by_uri: dict[str, list[types.Diagnostic]] = {}
        open_keys = {file_key(self.path_of(u)): u for u, _ in self.open_documents()}
        uri_of = {**{k: self.uri_of(k) for k in open_keys}, **open_keys}
        for uri, analysis in self.analyses.items():
            if not self.is_open(uri):
                continue
            for diagnostic in analysis.diagnostics:
                key = file_key(diagnostic.path)
                if key in open_keys and open_keys[key] != uri:
                    continue  # that file's own analysis reports it
                target = open_keys.get(key) or self.uri_of(diagnostic.path)
                uri_of.setdefault(key, target)
                lines = self.lines(analysis.text) if key == file_key(analysis.path) \
                    else self.lines_of(diagnostic.path)
                converted = to_lsp_diagnostic(diagnostic, lines, uri_of,
                                              self.lines_of)
                found = by_uri.setdefault(target, [])
                if converted not in found:
                    found.append(converted)
            by_uri.setdefault(uri, [])
        for uri in set(self.published) - set(by_uri):
            by_uri[uri] = []
        for uri, diagnostics in by_uri.items():
            version = self.analyses[uri].version if uri in self.analyses else None
            if self.published.get(uri) == (version, diagnostics):
                continue
            self.published[uri] = (version, diagnostics)
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
                uri=uri, diagnostics=diagnostics, version=version))

    def workspace_files(self) -> list[str]:
        """The workspace's .qal files (at most MAX_WORKSPACE_FILES). A workspace may be a
        home folder: the walk stops after a time budget, so references and rename answer
        within a bound, and its result is reused for a few seconds."""
        now = time.monotonic()
        if self._walk is not None and now - self._walk[0] < WORKSPACE_WALK_TTL_S:
            return self._walk[1]
        paths: list[str] = []
        deadline = now + WORKSPACE_WALK_S
        for root in self.roots:
            for folder, directories, files in os.walk(root):
                # A virtual environment is any folder with a pyvenv.cfg, whatever its name.
                directories[:] = [d for d in directories if not d.startswith(".")
                                  and d not in _SKIPPED_FOLDERS
                                  and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
                paths += [os.path.join(folder, f) for f in files if f.endswith(".qal")]
                if len(paths) >= MAX_WORKSPACE_FILES or time.monotonic() > deadline:
                    logger.warning("workspace walk stopped at %d .qal files", len(paths))
                    break
            else:
                continue
            break
        self._walk = (time.monotonic(), paths[:MAX_WORKSPACE_FILES])
        return self._walk[1]

    def workspace_analyses(self, name: str, program: set[str] | frozenset[str] = frozenset()
                           ) -> list[Analysis]:
        """Analyses of the workspace's .qal files that mention `name` (references and renames
        across files that are not open), cached by modification time. Only names imported
        cross files: a file with no `import` matters only if it is one of `program`'s (the
        keys of the files the asking buffer's program read)."""
        found: list[Analysis] = []
        open_keys = {file_key(self.path_of(u)) for u, _ in self.open_documents()}
        for path in self.workspace_files():
            if file_key(path) in open_keys:
                continue
            try:
                mtime = os.stat(path).st_mtime
                cached = self._disk.get(path)
                if cached is None or cached[0] != mtime:
                    data = read_file_bytes(Path(path))
                    if name.encode() not in data or \
                            (b"import" not in data and file_key(path) not in program):
                        continue
                    cached = (mtime, analyze(data.decode("utf-8", "replace"), path, None,
                                             self.read_bytes))
                    self._disk[path] = cached
                elif name not in cached[1].text or \
                        ("import" not in cached[1].text and file_key(path) not in program):
                    continue
                found.append(cached[1])
            except (OSError, SourceUnavailable):
                continue
        return found

    def others(self, uri: str, name: str) -> list[Analysis]:
        asking = self.analyses.get(uri)
        program = asking.files() if asking is not None else set()
        return [a for u, a in self.analyses.items() if u != uri] + \
            self.workspace_analyses(name, program)

    def report_server_error(self, error: Exception, source: Any) -> None:
        if isinstance(error, JsonRpcException) and error.code == REQUEST_FAILED:
            logger.info("request refused: %s", error)  # a reason shown to the user
        else:
            logger.error("%s", error)


def build_server(version: str = "") -> QalServer:
    server = QalServer(version)
    legend = types.SemanticTokensLegend(token_types=tokens.TOKEN_TYPES,
                                        token_modifiers=tokens.TOKEN_MODIFIERS)

    @server.feature(types.INITIALIZE)
    def initialize(ls: QalServer, params: types.InitializeParams) -> None:
        options = params.initialization_options
        if isinstance(options, dict) and isinstance(options.get("debounceMs"), (int, float)):
            ls.debounce_s = max(float(options["debounceMs"]), 0.0) / 1000
        folders = [ls.path_of(f.uri) for f in params.workspace_folders or []]
        if not folders and params.root_uri:
            folders = [ls.path_of(params.root_uri)]
        ls.roots = [f for f in folders if os.path.isdir(f)]
        # pygls picks the client's first offered encoding (Neovim offers UTF-8 first); every
        # conversion here follows it, and buffers split lines as the protocol does.
        ls.encoding = str(ls.workspace.position_encoding or "utf-16")
        ls.workspace._create_text_document = _text_document_factory(ls.workspace)  # type: ignore[method-assign]

    @server.feature(types.INITIALIZED)
    def initialized(ls: QalServer, params: types.InitializedParams) -> None:
        # Clients other than the VS Code extension (Neovim, Helix, ...) report file changes
        # only when asked: importers are then re-checked when an imported file changes on
        # disk, not only at their next keystroke.
        capabilities = ls.client_capabilities.workspace
        watched = capabilities.did_change_watched_files if capabilities else None
        if watched is not None and watched.dynamic_registration:
            ls.client_register_capability(types.RegistrationParams(registrations=[
                types.Registration(
                    id="qal-watched-files", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                    register_options=types.DidChangeWatchedFilesRegistrationOptions(
                        watchers=[types.FileSystemWatcher(glob_pattern="**/*.qal")]))]))

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: QalServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.client_uris[unquote(params.text_document.uri)] = params.text_document.uri
        ls.published.pop(params.text_document.uri, None)  # always publish on open
        ls.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: QalServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: QalServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri, stale=True)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: QalServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.client_uris.pop(unquote(uri), None)
        ls.analyses.pop(uri, None)
        ls.good.pop(uri, None)
        ls.parsers.pop(uri, None)
        ls.publish()

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched(ls: QalServer, params: types.DidChangeWatchedFilesParams) -> None:
        changed = {file_key(ls.path_of(change.uri)) for change in params.changes}
        if any(c.type != types.FileChangeType.Changed for c in params.changes):
            ls._walk = None  # a .qal file was created or deleted
        for uri, analysis in list(ls.analyses.items()):
            if changed & analysis.files() and ls.is_open(uri):
                ls.schedule(uri, importers=False, stale=True)

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def on_hover(ls: QalServer, params: types.HoverParams) -> types.Hover | None:
        uri = params.text_document.uri
        analysis, line, column, mapping = ls.view(uri, params.position)
        others = [a for u, a in ls.analyses.items() if u != uri]
        found = hover.hover(analysis, line, column, others)
        if found is None:
            return None
        text, (a, b, c, d) = found
        span = ls.here(analysis.path, Span(a, b, c, d), uri, mapping)
        document = ls.workspace.get_text_document(uri)
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                                        value=text),
                           range=ls.lines(document.source).range(span) if span else None)

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def on_definition(ls: QalServer, params: types.DefinitionParams) -> types.Location | None:
        uri = params.text_document.uri
        analysis, line, column, mapping = ls.view(uri, params.position)
        found = navigation.definition(analysis, line, column)
        if found is None:
            return None
        span = ls.here(found[0], found[1], uri, mapping)
        return ls.location(found[0], span) if span else None

    @server.feature(types.TEXT_DOCUMENT_REFERENCES)
    def on_references(ls: QalServer, params: types.ReferenceParams) -> list[types.Location]:
        uri = params.text_document.uri
        analysis, line, column, mapping = ls.view(uri, params.position)
        occurrence = navigation.key_at(analysis, line, column)
        if occurrence is None:
            return []
        others = ls.others(uri, occurrence.key.name.split(".")[-1])
        found = []
        for path, span in navigation.references(analysis, line, column, others,
                                                params.context.include_declaration):
            shown = ls.here(path, span, uri, mapping)
            if shown is not None:
                found.append(ls.location(path, shown))
        return found

    @server.feature(types.TEXT_DOCUMENT_PREPARE_RENAME)
    def on_prepare_rename(ls: QalServer, params: types.PrepareRenameParams
                          ) -> types.Range | types.PrepareRenamePlaceholder:
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        if analysis.index is None:
            raise JsonRpcException("the file does not parse; fix its syntax errors before "
                                   "renaming", REQUEST_FAILED)
        lines = ls.lines(analysis.text)
        try:
            span, placeholder = navigation.prepare_rename(analysis,
                                                          *lines.position(params.position))
        except navigation.RenameError as error:
            raise JsonRpcException(str(error), REQUEST_FAILED) from None
        if placeholder is not None:
            return types.PrepareRenamePlaceholder(range=lines.range(span), placeholder=placeholder)
        return lines.range(span)

    @server.feature(types.TEXT_DOCUMENT_RENAME,
                    types.RenameOptions(prepare_provider=True))
    def on_rename(ls: QalServer, params: types.RenameParams) -> types.WorkspaceEdit:
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        if analysis.index is None:
            raise JsonRpcException("the file does not parse; fix its syntax errors before "
                                   "renaming", REQUEST_FAILED)
        line, column = ls.lines(analysis.text).position(params.position)
        occurrence = navigation.key_at(analysis, line, column)
        if occurrence is None:
            raise JsonRpcException("nothing to rename here", REQUEST_FAILED)
        try:
            edits = navigation.rename(analysis, line, column, params.new_name,
                                      ls.others(uri, occurrence.key.name.split(".")[-1]))
        except navigation.RenameError as error:
            raise JsonRpcException(str(error), REQUEST_FAILED) from None
        return _workspace_edit(ls, edits)

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    def on_format(ls: QalServer, params: types.DocumentFormattingParams) -> list[types.TextEdit]:
        analysis = ls.analysis(params.text_document.uri)  # its module: parsed incrementally
        entry = analysis.program.entry
        if entry is None:
            return []  # does not parse: nothing to format, as `qalc fmt`
        formatted = format_module(entry.module)
        if formatted == analysis.text:
            return []
        lines = ls.lines(analysis.text)
        return [types.TextEdit(range=types.Range(start=types.Position(line=0, character=0),
                                                 end=lines.end()), new_text=formatted)]

    @server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def on_symbols(ls: QalServer,
                   params: types.DocumentSymbolParams) -> list[types.DocumentSymbol]:
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        if analysis.program.entry is None:  # half-typed: the outline of the last good text
            analysis = ls.best(uri)
        entry = analysis.program.entry
        if entry is None:
            return []
        mapping = None
        document = ls.workspace.get_text_document(uri)
        if analysis.text != document.source:
            mapping = LineMap(analysis.text, document.source)
        lines = ls.lines(document.source)
        return [s for s in (_symbol(s, lines, mapping)
                            for s in navigation.outline(entry.module)) if s is not None]

    @server.feature(types.TEXT_DOCUMENT_FOLDING_RANGE)
    def on_folding(ls: QalServer, params: types.FoldingRangeParams) -> list[types.FoldingRange]:
        document = ls.workspace.get_text_document(params.text_document.uri)
        lines = ls.lines(document.source)
        return [types.FoldingRange(start_line=lines.to_lsp(a, 1).line,
                                   end_line=lines.to_lsp(b, len(lines.line(b)) + 1).line,
                                   kind=types.FoldingRangeKind.Comment if kind == "comment"
                                   else types.FoldingRangeKind.Region)
                for a, b, kind in navigation.folding_ranges(document.source)]

    @server.feature(types.TEXT_DOCUMENT_SEMANTIC_TOKENS_FULL, legend)
    def on_tokens(ls: QalServer, params: types.SemanticTokensParams) -> types.SemanticTokens:
        uri = params.text_document.uri
        document = ls.workspace.get_text_document(uri)
        analysis = ls.analysis(uri)
        return types.SemanticTokens(
            data=tokens.encode(tokens.semantic_tokens(analysis, document.source,
                                                      ls.lines(document.source))))

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[".", "{", "(", " ", "="]))
    def on_completion(ls: QalServer, params: types.CompletionParams) -> types.CompletionList:
        uri = params.text_document.uri
        document = ls.workspace.get_text_document(uri)
        lines = ls.lines(document.source)
        line, column = lines.position(params.position)
        analysis, old_line, _, _ = ls.view(uri, params.position)
        items = completion.complete(document.source, offset_of(document.source, line, column),
                                    analysis, old_line or line)
        return types.CompletionList(is_incomplete=False, items=[
            types.CompletionItem(label=i.label, kind=_COMPLETION_KINDS.get(i.kind),
                                 detail=i.detail or None) for i in items])

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                    types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
    def on_code_action(ls: QalServer,
                       params: types.CodeActionParams) -> list[types.CodeAction]:
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        lines = ls.lines(analysis.text)
        first = lines.position(params.range.start)[0]
        last = lines.position(params.range.end)[0]
        result = []
        for fix in actions.fixes(analysis, first, last):
            diagnostic = to_lsp_diagnostic(fix.diagnostic, lines, {}, ls.lines_of)
            result.append(types.CodeAction(
                title=fix.title, kind=types.CodeActionKind.QuickFix,
                diagnostics=[diagnostic], is_preferred=fix.preferred,
                edit=_workspace_edit(ls, fix.edits)))
        return result

    return server


_COMPLETION_KINDS = {
    "keyword": types.CompletionItemKind.Keyword, "function": types.CompletionItemKind.Function,
    "collection": types.CompletionItemKind.Variable, "scale": types.CompletionItemKind.Enum,
    "template": types.CompletionItemKind.Interface, "principle": types.CompletionItemKind.Module,
    "dimension": types.CompletionItemKind.Class, "question": types.CompletionItemKind.Field,
    "slot": types.CompletionItemKind.Variable,
}

_SYMBOL_KINDS = {
    "principle": types.SymbolKind.Namespace, "dimension": types.SymbolKind.Class,
    "question": types.SymbolKind.Field, "scale": types.SymbolKind.Enum,
    "label": types.SymbolKind.EnumMember, "template": types.SymbolKind.Interface,
    "reward": types.SymbolKind.Function, "block": types.SymbolKind.Object,
}


def _symbol(symbol: navigation.Symbol, lines: Lines,
            mapping: LineMap | None) -> types.DocumentSymbol | None:
    span, selection = symbol.span, symbol.selection
    if mapping is not None:
        span, selection = mapping.to_new(span), mapping.to_new(selection)  # type: ignore[assignment]
        if span is None or selection is None:
            return None
    children = [c for c in (_symbol(c, lines, mapping) for c in symbol.children)
                if c is not None]
    return types.DocumentSymbol(
        name=symbol.name, detail=symbol.detail or None, kind=_SYMBOL_KINDS[symbol.kind],
        range=lines.range(span), selection_range=lines.range(selection),
        children=children or None)


def _workspace_edit(ls: QalServer,
                    edits: dict[str, list[tuple[Span, str]]]) -> types.WorkspaceEdit:
    changes: dict[str, list[types.TextEdit]] = {}
    for path, spans in edits.items():
        lines = ls.lines_of(path)
        changes[ls.uri_of(path)] = [types.TextEdit(range=lines.range(span), new_text=text)
                                    for span, text in spans]
    return types.WorkspaceEdit(changes=changes)


_PROTOCOL_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class _Document(TextDocument):
    """pygls splits lines with `str.splitlines`, which also breaks at U+2028, U+0085, form
    feeds and more: an incremental change after such a character would land on the wrong
    line. The protocol's line breaks are only "\n", "\r\n" and "\r"."""

    @property
    def lines(self) -> list[str]:
        return _PROTOCOL_LINES.findall(self.source)


def _text_document_factory(workspace: Workspace) -> Any:
    def create(doc_uri: str, source: str | None = None, version: int | None = None,
               language_id: str | None = None) -> TextDocument:
        return _Document(doc_uri, source=source, version=version, language_id=language_id,
                         sync_kind=workspace._sync_kind,
                         position_codec=workspace.position_codec)
    return create


class _QuietRefusals(logging.Filter):
    """pygls logs every error response with a traceback; a refused rename ("nothing to
    rename here", a collision) is an answer, not a server fault: without this, each F2 on
    a keyword wrote a traceback to the client's log (and a client that never reads the
    server's stderr would eventually block it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, JsonRpcException) and error.code == REQUEST_FAILED)


def serve(version: str = "") -> None:
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_QuietRefusals())
    server = build_server(version)
    server.start_io()
