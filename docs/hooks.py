"""MkDocs hooks for the fisherfast docs site (wired in by `hooks:` in mkdocs.yml).

- Notebooks: every notebook under `nbs/` (tutorials included; `_`/`.`-prefixed files and folders
  skipped, as nbdev does) becomes a page at `nbs/<path>.ipynb`, rendered by mkdocs-jupyter. The
  hook gives mkdocs-jupyter a copy processed the way nbdev renders docs: `#| hide`, `#| exporti`,
  `#| include: false` and `#| default_exp` cells dropped, `#| echo: false` hides the input,
  `#| output: false` hides the outputs, and the `#|` directive lines themselves are removed.
- API reference: one page per module of `fisherfast/` (`api/<dotted.name>.md`, holding
  `::: dotted.name` for mkdocstrings), unless `docs/api/<dotted.name>.md` exists, which then wins
  (write one to add prose). New modules therefore appear with no edit at all.
- Navigation: built from what exists unless mkdocs.yml sets `nav:` itself.
"""
import json, re, shutil, tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
NBS, PKG, DOCS = ROOT / 'nbs', ROOT / 'fisherfast', ROOT / 'docs'
SKIP_MODULES = {'_modidx', 'all'}  # generated index; star-import convenience module
SECTION_ORDER = ['core', 'fisher', 'sparse']  # others follow alphabetically
_tmp = None


def _skip(rel): return any(part.startswith(('_', '.')) for part in rel.parts)


def _sort_key(rel):
    top = rel.parts[0] if len(rel.parts) > 1 else ''
    return (SECTION_ORDER.index(top) if top in SECTION_ORDER else len(SECTION_ORDER), rel.as_posix())


def notebooks():
    "Notebooks under nbs/, relative to it: module notebooks first (core, fisher, sparse), tutorials separate"
    if not NBS.exists(): return []
    nbs = [p.relative_to(NBS) for p in NBS.rglob('*.ipynb')]
    return sorted((p for p in nbs if not _skip(p)), key=_sort_key)


def modules():
    "Dotted names of the modules of the package, in section order"
    mods = [p.relative_to(ROOT).with_suffix('') for p in PKG.rglob('*.py')]
    mods = [m for m in mods if m.name != '__init__' and m.name not in SKIP_MODULES and not _skip(Path(*m.parts[1:]))]
    return ['.'.join(m.parts) for m in sorted(mods, key=lambda m: _sort_key(Path(*m.parts[1:])))]


def _title(rel): return rel.stem.replace('_', ' ').capitalize()


def on_config(config):
    config.watch.extend(str(p) for p in (NBS, PKG) if p.exists())  # `mkdocs serve` reloads on edits
    if config.nav is None:
        nbs = notebooks()
        tuts = [n for n in nbs if n.parts[0] == 'tutorials']
        mods = [n for n in nbs if n.parts[0] != 'tutorials']
        nav = [{'Home': 'index.md'}]
        nav += [{p.stem.replace('_', ' ').capitalize(): p.name} for p in sorted(DOCS.glob('*.md')) if p.name != 'index.md']
        if tuts: nav.append({'Tutorials': [{_title(n): f'nbs/{n.as_posix()}'} for n in tuts]})
        if mods: nav.append({'Notebooks': [{'/'.join(n.with_suffix('').parts): f'nbs/{n.as_posix()}'} for n in mods]})
        nav.append({'API reference': [{m: f'api/{m}.md'} for m in modules()]})
        config.nav = nav
    return config


_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*?)\s*$')


def _parse(d):
    "`'echo: false'` -> `('echo', 'false')`; `'export'` -> `('export', '')`"
    m = re.match(r'([\w-]+)\s*:?\s*(.*)$', d)
    return (m.group(1), m.group(2).strip().lower()) if m else (d, '')


def _process_nb(src, dst):
    nb = json.loads(src.read_text(encoding='utf-8'))
    cells = []
    for c in nb.get('cells', []):
        if c['cell_type'] == 'raw': continue  # quarto frontmatter etc.
        if c['cell_type'] == 'code':
            lines = c['source'] if isinstance(c['source'], list) else c['source'].splitlines(True)
            dirs, body = [], list(lines)
            while body and (m := _DIRECTIVE.match(body[0])):
                dirs.append(m.group(1)); body.pop(0)
            kv = dict(_parse(d) for d in dirs)
            if kv.keys() & {'hide', 'exporti', 'default_exp'} or kv.get('include') == 'false': continue
            tags = set(c.get('metadata', {}).get('tags', []))
            c['metadata'] = {}  # execution timings and the like: nothing the page shows
            if kv.get('echo') == 'false' or 'hide_input' in kv: tags.add('hide_input')
            if kv.get('output') == 'false' or 'hide_output' in kv: tags.add('hide_output')
            c['source'] = ''.join(body).strip('\n')
            if not c['source'] and not c.get('outputs'): continue
            if tags: c.setdefault('metadata', {})['tags'] = sorted(tags)
        cells.append(c)
    nb['cells'] = cells
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb), encoding='utf-8')


@event_priority(100)  # before mkdocs-jupyter's on_files, so that it picks the notebooks up
def on_files(files, config):
    global _tmp
    if _tmp: shutil.rmtree(_tmp, ignore_errors=True)
    _tmp = Path(tempfile.mkdtemp(prefix='fisherfast-docs-'))
    def add(rel):
        files.append(File(rel, str(_tmp), config.site_dir, config.use_directory_urls))
    for n in notebooks():
        _process_nb(NBS / n, _tmp / 'nbs' / n)
        add(f'nbs/{n.as_posix()}')
    for m in modules():
        if (DOCS / 'api' / f'{m}.md').exists(): continue
        p = _tmp / 'api' / f'{m}.md'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f'# `{m}`\n\n::: {m}\n', encoding='utf-8')
        add(f'api/{m}.md')
    return files


def on_shutdown():
    if _tmp: shutil.rmtree(_tmp, ignore_errors=True)
