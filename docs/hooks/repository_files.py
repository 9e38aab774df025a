"""MkDocs hook: the pages link repository files outside docs/ (`../examples/qnn/model-settings.json`,
`../bench/README.md`) so that the links work when the Markdown is read in a checkout or on a
code host. The site cannot reach outside docs/, so the files linked are copied into it at the
same path from the repository root (Markdown ones rendered as pages, not in the nav, their own
links followed too), and the links are pointed at the copies. A link to a file that does not
exist is left alone, and `mkdocs build --strict` fails on it."""
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

LINK = re.compile(r"(\]\()([^)\s#]+)([^)\s]*\))")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.M | re.S)  # fenced blocks and code spans


def _outside_targets(source: Path, docs: Path, repo: Path) -> List[Path]:
    """Existing repository files outside docs/ that the Markdown file `source` links."""
    text = CODE.sub("", source.read_text(encoding="utf-8"))
    found = []
    for _, target, _ in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        path = Path(os.path.normpath(source.parent / target))
        if path.is_file() and repo in path.parents and docs not in path.parents:
            found.append(path)
    return found


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs, repo = Path(config.docs_dir).resolve(), Path(config.config_file_path).resolve().parent
    pending = [Path(page.abs_src_path) for page in files.documentation_pages()]
    added: Dict[Path, File] = {}
    while pending:
        for path in _outside_targets(pending.pop(), docs, repo):
            if path in added:
                continue
            added[path] = File(
                path.relative_to(repo).as_posix(), str(repo), config.site_dir,
                config.use_directory_urls, inclusion=InclusionLevel.NOT_IN_NAV,
            )
            files.append(added[path])
            if path.suffix == ".md":
                pending.append(path)
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> Optional[str]:
    """`../examples/x.json` from docs/devices.md -> `examples/x.json`, the copy in the site;
    `../docs/requests.md` from bench/README.md -> `../requests.md`, the page."""
    docs, repo = Path(config.docs_dir).resolve(), Path(config.config_file_path).resolve().parent
    source = Path(page.file.abs_src_path)
    here = docs / Path(page.file.src_uri).parent  # where the site places this page

    def relink(match: re.Match) -> str:
        start, target, rest = match.groups()
        path = Path(os.path.normpath(source.parent / target))
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)
        if not path.is_file() or repo not in path.parents:
            return match.group(0)
        copy = path if docs in path.parents else docs / path.relative_to(repo)
        return start + os.path.relpath(copy, here).replace(os.sep, "/") + rest

    parts, start = [], 0
    for code in CODE.finditer(markdown):  # code is shown as written
        parts += [LINK.sub(relink, markdown[start:code.start()]), code.group(0)]
        start = code.end()
    return "".join(parts) + LINK.sub(relink, markdown[start:])
