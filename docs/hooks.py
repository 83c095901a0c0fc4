"""MkDocs hooks for the fisherfast docs site (wired in by `hooks:` in mkdocs.yml).

- Notebooks: every notebook under `nbs/` (tutorials included; `_`/`.`-prefixed files and folders
  skipped, as nbdev does) becomes a page at `nbs/<path>.ipynb`, rendered by mkdocs-jupyter. The
  hook gives mkdocs-jupyter a copy processed the way nbdev renders docs: `#| hide`, `#| exporti`,
  `#| include: false` and `#| default_exp` cells dropped, `#| echo: false` hides the input,
  `#| output: false` hides the outputs, and the `#|` directive lines themselves are removed.
- API reference: one page per module of `fisherfast/` (`api/<dotted.name>.md`, holding
  `::: dotted.name`), unless `docs/api/<dotted.name>.md` exists, which then wins (write one to add
  prose). New modules therefore appear with no edit at all. In every page a line `::: dotted.name`
  (a module) becomes its reference, rendered here the way nbdev's `show_doc` does: for each name in
  `__all__`, its signature as written, its docstring and a table of the parameters' docments (the
  `# comment` after each one); classes get their `__init__`'s and then their public methods and
  properties, `@patch`ed ones included (they are attributes of the class by then).
- Navigation: built from what exists unless mkdocs.yml sets `nav:` itself.
"""
import ast, importlib, inspect, json, pprint, re, shutil, sys, tempfile, textwrap, types, warnings
from pathlib import Path

from fastcore.docments import docments
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
NBS, PKG, DOCS = ROOT / 'nbs', ROOT / 'fisherfast', ROOT / 'docs'
SKIP_MODULES = {'_modidx', 'all'}  # generated index; star-import convenience module
SECTION_ORDER = ['core', 'stats', 'criteria', 'sparse']  # others follow alphabetically
_tmp = None


def _skip(rel): return any(part.startswith(('_', '.')) for part in rel.parts)


def _sort_key(rel):
    top = rel.parts[0] if len(rel.parts) > 1 else ''
    return (SECTION_ORDER.index(top) if top in SECTION_ORDER else len(SECTION_ORDER), rel.as_posix())


def notebooks():
    "Notebooks under nbs/, relative to it, in section order"
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


_CODE = re.compile(r'(`+).+?\1')


def _md(s, cell=False):
    "Markdown text `s` with `<` outside code spans escaped (and `|`, and newlines, for a table `cell`)"
    def esc(t): return t.replace('<', '&lt;').replace('|', r'\|').replace('\n', ' ') if cell else t.replace('<', '&lt;')
    parts, i = [], 0
    for m in _CODE.finditer(s): parts += [esc(s[i:m.start()]), m.group()]; i = m.end()
    return ''.join(parts + [esc(s[i:])])


def _code(s): return f'`` {s} ``' if '`' in s else f'`{s}`' if s else ''


def _src(o):
    "The source of `o`, dedented; '' where there is none"
    try: return textwrap.dedent(inspect.getsource(o))
    except (OSError, TypeError): return ''


def _written_defaults(f):
    "`{parameter: its default as written in the source}` of function `f`"
    src = _src(f)
    try: fn = ast.parse(src).body[0]
    except (SyntaxError, IndexError): return {}
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): return {}
    a, pos = fn.args, fn.args.posonlyargs + fn.args.args
    pairs = [*zip(pos[len(pos) - len(a.defaults):], a.defaults), *zip(a.kwonlyargs, a.kw_defaults)]
    return {p.arg: ast.get_source_segment(src, d) for p, d in pairs if d is not None}


def _anno(a):
    "Annotation `a` as text: as written when it is a string (`from __future__ import annotations`)"
    if a is inspect.Parameter.empty: return ''
    a = getattr(a, '__forward_arg__', a)  # a NamedTuple's, say
    return a if isinstance(a, str) else a.__qualname__ if isinstance(a, type) else inspect.formatannotation(a)


def _doc(name, o, anchor, level=2, skip_first=False):
    "Markdown for `o` as nbdev's `show_doc` shows it: heading, signature, docstring, table of the parameters"
    try: sig = inspect.signature(o)
    except (TypeError, ValueError): sig = None
    ps = list(sig.parameters.values())[skip_first:] if sig else []
    written = _written_defaults(o.__init__ if inspect.isclass(o) else o)
    dms = {k: v.docment for k, v in docments(o, full=True).items() if v.docment} if sig else {}
    rows, parts = [], []
    for p in ps:
        star = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '')
        a = _anno(p.annotation)
        d = '' if p.default is p.empty else written.get(p.name) or re.sub(r' at 0x[0-9a-f]+', '', repr(p.default))
        parts.append(f"{star}{p.name}{': ' + a if a else ''}{(' = ' if a else '=') + d if d else ''}")
        t = a or ('' if p.default is p.empty or p.default is None else type(p.default).__qualname__)
        rows.append(f'| {_code(star + p.name)} | {_code(t)} | {_code(d)} | {_md(dms.get(p.name, ""), cell=True)} |')
    if n := sum(p.kind == p.POSITIONAL_ONLY for p in ps): parts.insert(n, '/')
    kw = next((i for i, p in enumerate(ps) if p.kind == p.KEYWORD_ONLY), None)
    if kw is not None and all(p.kind != p.VAR_POSITIONAL for p in ps): parts.insert(kw + bool(n), '*')
    ret = '' if inspect.isclass(o) or not sig else _anno(sig.return_annotation)
    if 'return' in dms: rows.append(f'| **Returns** | {_code(ret)} |  | {_md(dms["return"], cell=True)} |')
    head = f"{'class ' if inspect.isclass(o) else ''}{name}"
    one = f"{head}({', '.join(parts)})" if sig else head
    if len(one) > 90: one = f"{head}(\n" + ''.join(f'    {x},\n' for x in parts) + ')'
    out = [f"{'#' * level} {name} {{#{anchor}}}", f"```python\n{one}{' -> ' + ret if ret else ''}\n```"]
    if doc := inspect.cleandoc(o.__doc__ or ''): out.append(_md(doc))
    if dms: out.append('|  | Type | Default | Details |\n| --- | --- | --- | --- |\n' + '\n'.join(rows))
    if src := _src(o): out.append('??? quote "Source"\n\n' + textwrap.indent(f'````python\n{src}````', '    '))
    return out


def _members(cls, modname):
    "Markdown for the public methods and properties of class `cls`, in the order they were defined or patched"
    out = []
    for k, v in vars(cls).items():
        if k.startswith('_'): continue
        name, anchor = f'{cls.__name__}.{k}', f'{modname}.{cls.__name__}.{k}'
        if isinstance(v, property):
            out += [f'### {name} {{#{anchor}}}', f'```python\n{name}  # property\n```', _md(inspect.cleandoc(v.__doc__ or ''))]
        elif isinstance(v, (types.FunctionType, staticmethod, classmethod)):
            out += _doc(name, getattr(cls, k), anchor, 3, skip_first=isinstance(v, types.FunctionType))
    return out


def api_markdown(modname):
    "Markdown reference of module `modname`: its docstring, then each name of its `__all__` (else its public names)"
    mod = importlib.import_module(modname)
    out = [_md(inspect.cleandoc(mod.__doc__ or ''))]
    for name in getattr(mod, '__all__', [n for n in vars(mod) if not n.startswith('_')]):
        o, anchor = getattr(mod, name), f'{modname}.{name}'
        if inspect.isclass(o): out += _doc(name, o, anchor) + _members(o, modname)
        elif inspect.isroutine(o): out += _doc(name, o, anchor)
        else: out += [f'## {name} {{#{anchor}}}', f'```python\n{name} = {pprint.pformat(o, width=100, sort_dicts=False)}\n```']
    return '\n\n'.join(out) + '\n'


def on_page_markdown(markdown, page, config, files):
    return re.sub(r'^::: *([\w.]+) *$', lambda m: api_markdown(m.group(1)), markdown, flags=re.M)


@event_priority(100)  # before mkdocs-jupyter's on_files, so that it picks the notebooks up
def on_files(files, config):
    global _tmp
    if _tmp: shutil.rmtree(_tmp, ignore_errors=True)
    for m in [m for m in sys.modules if m.split('.')[0] == PKG.name]: del sys.modules[m]  # `mkdocs serve`: fresh code
    with warnings.catch_warnings():  # third-party deprecation notices at import: not the docs' business
        warnings.simplefilter('ignore')
        for m in modules(): importlib.import_module(m)  # all of them, so that every `@patch` has run
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
